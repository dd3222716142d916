"""Reshape a tensor into the groups that share one scale, and back.

Every tensor is first seen as 2-D ``[rows, cols]`` (all leading dims are rows; a 1-D tensor is one
row). A granularity then maps it to ``[A, B, n]``: ``A x B`` groups of ``n`` values, scales being
``[A, B]``:

=========  ==========================  =============
kind       groups                      scales shape
=========  ==========================  =============
tensor     one group of rows*cols      [1, 1]
channel    one group per row           [rows, 1]
token      one group per row           [rows, 1]
group g    cols/g groups per row       [rows, cols/g]
block RxC  R x C tiles                 [rows/R, cols/C]
=========  ==========================  =============

Public quantization requires the group/block size to divide the dimension (``check_divisible``).
Internally (double quantization of a flat vector of scales) a ragged last group is allowed: it is
padded by repeating its last value, which changes neither its min, max nor absmax, and cropped away
again by :func:`from_groups`.
"""

from __future__ import annotations

import math

import torch

from anybit.errors import ShapeError
from anybit.scheme import Granularity


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """The 2-D ``[rows, cols]`` view of ``t`` (cols = last dim)."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(-1, t.shape[-1])


def valid_group_sizes(n: int, limit: int = 1024) -> list[int]:
    """Divisors of ``n`` that are multiples of 8 (kernel-friendly), up to ``limit``."""
    sizes = [d for d in range(8, min(n, limit) + 1, 8) if n % d == 0]
    return sizes or [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def check_divisible(shape2d: tuple[int, int], gran: Granularity, what: str) -> None:
    rows, cols = shape2d
    if gran.kind == "group":
        assert gran.group_size is not None
        if cols % gran.group_size:
            raise ShapeError(
                f"{what}: group size {gran.group_size} does not divide the input dimension {cols}; "
                f"valid group sizes: {valid_group_sizes(cols)}"
            )
    elif gran.kind == "block":
        assert gran.block_shape is not None
        br, bc = gran.block_shape
        if rows % br or cols % bc:
            raise ShapeError(
                f"{what}: block {br}x{bc} does not tile the {rows}x{cols} matrix; "
                f"valid row sizes {valid_group_sizes(rows)}, column sizes {valid_group_sizes(cols)}"
            )


def num_groups(shape2d: tuple[int, int], gran: Granularity) -> tuple[int, int]:
    """``(A, B)``: the shape of the scales."""
    rows, cols = shape2d
    if gran.kind == "tensor":
        return 1, 1
    if gran.kind in ("channel", "token"):
        return rows, 1
    if gran.kind == "group":
        assert gran.group_size is not None
        return rows, math.ceil(cols / gran.group_size)
    assert gran.block_shape is not None
    return math.ceil(rows / gran.block_shape[0]), math.ceil(cols / gran.block_shape[1])


def to_groups(x2d: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """``[rows, cols] -> [A, B, n]`` (see module docstring)."""
    rows, cols = x2d.shape
    if gran.kind == "tensor":
        return x2d.reshape(1, 1, rows * cols)
    if gran.kind in ("channel", "token"):
        return x2d.reshape(rows, 1, cols)
    if gran.kind == "group":
        assert gran.group_size is not None
        g = gran.group_size
        pad = (-cols) % g
        if pad:
            x2d = torch.cat([x2d, x2d[:, -1:].expand(rows, pad)], dim=1)
        return x2d.reshape(rows, -1, g)
    assert gran.block_shape is not None
    br, bc = gran.block_shape
    if rows % br or cols % bc:
        raise ShapeError(f"block {br}x{bc} does not tile {rows}x{cols}")
    return (
        x2d.reshape(rows // br, br, cols // bc, bc)
        .permute(0, 2, 1, 3)
        .reshape(rows // br, cols // bc, br * bc)
    )


def from_groups(g: torch.Tensor, gran: Granularity, shape2d: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_groups`."""
    rows, cols = shape2d
    if gran.kind in ("tensor", "channel", "token"):
        return g.reshape(rows, cols)
    if gran.kind == "group":
        return g.reshape(rows, -1)[:, :cols]
    assert gran.block_shape is not None
    br, bc = gran.block_shape
    return g.reshape(rows // br, cols // bc, br, bc).permute(0, 2, 1, 3).reshape(rows, cols)

"""Calibration algorithms; each module implements one method and names its paper."""

from anybit.algorithms import rtn  # noqa: F401  (registers)
from anybit.algorithms.base import Algorithm, BlockContext, available, register, resolve

__all__ = ["Algorithm", "BlockContext", "available", "register", "resolve"]

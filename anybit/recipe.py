"""Recipes: what to quantize, how, and with which algorithms.

A :class:`Recipe` names the weight scheme, the activation scheme (or none: weight-only), the
calibration algorithms in the order they run, per-layer overrides (regular expressions on module
names, first match wins) and which modules beyond the decoder blocks' linears are quantized
(``lm_head``, embeddings). It is plain data: it loads from YAML or TOML with unknown keys rejected,
and serializes into checkpoint headers.

Example (YAML)::

    weights: int4:g64
    acts: int8:token
    algorithms: [rtn]
    overrides:
      - pattern: 'mlp\\.down_proj$'
        weights: int8:channel
      - pattern: 'layers\\.0\\.'
        weights: skip          # keep this layer in float
    lm_head: false
    calibration: {samples: 128, seqlen: 512, seed: 0}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from anybit.errors import SchemeError
from anybit.scheme import QScheme, parse_scheme

RECIPE_VERSION = 1
SKIP = "skip"


def _scheme_or_none(value: Any, what: str) -> QScheme | None:
    if value is None or value == SKIP or value == "none" or value == "fp":
        return None
    if isinstance(value, QScheme):
        return value
    if not isinstance(value, str):
        raise SchemeError(f"{what} must be a scheme string such as 'int4:g64' or 'skip', got {value!r}")
    return parse_scheme(value)


@dataclass(frozen=True)
class LayerPlan:
    """How one module is quantized: weight scheme (None = keep float) and activation scheme."""

    weights: QScheme | None
    acts: QScheme | None


@dataclass(frozen=True)
class LayerOverride:
    """Modules whose name matches ``pattern`` (``re.search``) use these schemes instead."""

    pattern: str
    weights: QScheme | str | None = "inherit"
    acts: QScheme | str | None = "inherit"

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise SchemeError(
                f"override pattern {self.pattern!r} is not a valid regular expression: {err}"
            ) from None
        for attr in ("weights", "acts"):
            value = getattr(self, attr)
            if value != "inherit":
                object.__setattr__(self, attr, _scheme_or_none(value, f"override {self.pattern!r} {attr}"))


@dataclass(frozen=True)
class CalibrationConfig:
    samples: int = 128
    seqlen: int = 512
    seed: int = 0
    corpus: str = "foldoc"

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seqlen < 2:
            raise SchemeError(
                f"calibration needs samples >= 1 and seqlen >= 2, got {self.samples}, {self.seqlen}"
            )


@dataclass(frozen=True)
class Recipe:
    weights: QScheme | None
    acts: QScheme | None = None
    algorithms: tuple[str, ...] = ("rtn",)
    overrides: tuple[LayerOverride, ...] = ()
    lm_head: bool = False
    embeddings: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    options: tuple[tuple[str, Any], ...] = ()  # algorithm options, e.g. (("gptq.damp", 0.01),)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", _scheme_or_none(self.weights, "weights"))
        object.__setattr__(self, "acts", _scheme_or_none(self.acts, "acts"))
        if isinstance(self.algorithms, str):
            object.__setattr__(
                self, "algorithms", tuple(a.strip() for a in self.algorithms.split(",") if a.strip())
            )
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if (
            self.acts is not None
            and self.acts.granularity.kind in ("group", "block")
            and not self.acts.dynamic
        ):
            raise SchemeError(f"static activation scheme {self.acts} must be per-tensor; use :tensor:static")

    # ----- lookup -----------------------------------------------------------------------------
    def plan_for(self, name: str) -> LayerPlan:
        """The plan of module ``name`` (first matching override wins)."""
        weights, acts = self.weights, self.acts
        for override in self.overrides:
            if re.search(override.pattern, name):
                if override.weights != "inherit":
                    weights = override.weights  # type: ignore[assignment]
                if override.acts != "inherit":
                    acts = override.acts  # type: ignore[assignment]
                break
        return LayerPlan(weights, acts)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    # ----- (de)serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def scheme(s: QScheme | str | None) -> str | None:
            return None if s is None else str(s)

        return {
            "version": RECIPE_VERSION,
            "weights": scheme(self.weights) or SKIP,
            "acts": scheme(self.acts),
            "algorithms": list(self.algorithms),
            "overrides": [
                {
                    "pattern": o.pattern,
                    **({} if o.weights == "inherit" else {"weights": scheme(o.weights) or SKIP}),
                    **({} if o.acts == "inherit" else {"acts": scheme(o.acts) or SKIP}),
                }
                for o in self.overrides
            ],
            "lm_head": self.lm_head,
            "embeddings": self.embeddings,
            "calibration": {
                "samples": self.calibration.samples,
                "seqlen": self.calibration.seqlen,
                "seed": self.calibration.seed,
                "corpus": self.calibration.corpus,
            },
            "options": dict(self.options),
        }

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
        allowed = {
            "version",
            "weights",
            "acts",
            "algorithms",
            "overrides",
            "lm_head",
            "embeddings",
            "calibration",
            "options",
        }
        unknown = set(data) - allowed
        if unknown:
            raise SchemeError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        version = data.get("version", RECIPE_VERSION)
        if version != RECIPE_VERSION:
            raise SchemeError(
                f"{source}: recipe version {version} is not supported (this anybit reads {RECIPE_VERSION})"
            )
        overrides = []
        for item in data.get("overrides", []) or []:
            if (
                not isinstance(item, dict)
                or "pattern" not in item
                or set(item) - {"pattern", "weights", "acts"}
            ):
                raise SchemeError(
                    f"{source}: each override needs 'pattern' and optional 'weights'/'acts', got {item!r}"
                )
            overrides.append(
                LayerOverride(item["pattern"], item.get("weights", "inherit"), item.get("acts", "inherit"))
            )
        calib = data.get("calibration", {}) or {}
        unknown_calib = set(calib) - {"samples", "seqlen", "seed", "corpus"}
        if unknown_calib:
            raise SchemeError(f"{source}: unknown calibration keys {sorted(unknown_calib)}")
        algorithms = data.get("algorithms", ["rtn"])
        if isinstance(algorithms, str):
            algorithms = [a.strip() for a in algorithms.split(",") if a.strip()]
        return Recipe(
            weights=data.get("weights"),
            acts=data.get("acts"),
            algorithms=tuple(algorithms),
            overrides=tuple(overrides),
            lm_head=bool(data.get("lm_head", False)),
            embeddings=bool(data.get("embeddings", False)),
            calibration=CalibrationConfig(**calib),
            options=tuple(sorted((data.get("options") or {}).items())),
        )

    @staticmethod
    def load(path: str | Path) -> Recipe:
        """Read a recipe from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise SchemeError(f"recipe file {path} does not exist")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                data = yaml.safe_load(text)
            elif path.suffix == ".toml":
                data = tomllib.loads(text)
            elif path.suffix == ".json":
                data = json.loads(text)
            else:
                raise SchemeError(f"recipe file {path}: use a .yaml, .toml or .json file")
        except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise SchemeError(f"recipe file {path} does not parse: {err}") from None
        if not isinstance(data, dict):
            raise SchemeError(f"recipe file {path} must hold a mapping, got {type(data).__name__}")
        return Recipe.from_dict(data, str(path))

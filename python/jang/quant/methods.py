"""The rounding methods, and the options of calibration and tuning: one registry that the
converter, the command line and the per-tensor quantizer all read. Adding a method means adding an entry here (and, for a
per-tensor one, its block rounder next to `rtn_block` and `clip_block`).

* per-tensor methods round each tensor alone, block by block (`block` is the rounder);
* model-level methods (GPTQ) need the model and calibration text and round all matrices
  in one pass before the bundle is written (`block` is None).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jang.errors import QuantizationError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help
    rounder: str | None  # "module:function" of the per-tensor block rounder; None: model-level
    debias: bool = False  # rescale rows after rounding by default (`jang.quant.debias`)

    @property
    def calibrated(self) -> bool:
        """Needs the model and calibration text (a model-level method)."""
        return self.rounder is None

    @property
    def block(self) -> Callable | None:
        """The block rounder (imported on use: the command line reads this registry without
        loading numpy or MLX)."""
        if self.rounder is None:
            return None
        module, name = self.rounder.split(":")
        return getattr(importlib.import_module(module), name)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("rtn", "round to nearest, as mx.quantize", "jang.quant.rtn:rtn_block"),
        Method(
            "clip",
            "MSE clip search per group, the default",
            "jang.quant.clip:clip_block",
            debias=True,
        ),
        Method("gptq", "calibrated, layer by layer", None),
    )
}
DEFAULT_METHOD = "clip"


def get_method(name: str) -> Method:
    """The registry entry of `name`, or a QuantizationError listing the methods."""
    if name not in METHODS:
        raise QuantizationError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


TUNE_SCOPES = ("block", "model")


@dataclass(frozen=True)
class TuneOptions:
    """How to tune: passes over the windows, how many windows, Adam's rate, whether the
    normalization gains train too, and the scope: "block" (each decoder layer against the
    float layer's outputs, one layer in memory: `jang.convert.tune_stream`) or "model"
    (the next-token KL through the whole model, all of it in memory: `jang.quant.tune`)."""

    epochs: int = 2
    samples: int = 32
    lr: float = 1e-3
    norms: bool = False
    scope: str = "block"

    def check(self) -> None:
        """Refuse settings that cannot train, before any work (rounding can take minutes)."""
        if self.scope not in TUNE_SCOPES:
            raise QuantizationError(
                f"--tune-scope must be one of {', '.join(TUNE_SCOPES)}, got {self.scope!r}"
            )
        if self.epochs < 1 or self.samples < 1 or not self.lr > 0:
            raise QuantizationError(
                f"--tune needs positive epochs, samples and learning rate, got "
                f"{self.epochs}, {self.samples}, {self.lr}"
            )
        from jang.quant.tune import _torch

        _torch()


@dataclass(frozen=True)
class Calibration:
    """The calibration text of a conversion (GPTQ and tuning): what `calibration_text`
    (`jang.text`) reads, how many windows and how long."""

    text: str | Path | None = None  # a file, a corpus name, a+b, or None: the built-in sample
    samples: int = 128  # windows (GPTQ; tuning takes its own count)
    seq_len: int = 512  # tokens per window

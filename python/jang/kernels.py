"""Route a quantized MLX model's matmuls through jang's kernels.

``use_jang_kernels(model)`` re-classes every affine-quantized ``nn.QuantizedLinear``,
``nn.QuantizedEmbedding`` (its ``as_linear`` path, used by tied output heads) and
mlx-lm ``QuantizedSwitchLinear`` / ``SwitchGLU`` module to a subclass whose forward calls
``jang.qmatmul`` / ``jang.gather_qmm`` / ``jang.moe_gate_up`` with that module's own bits and
group size. Parameters, names and state are untouched, so saving, loading and
``mlx_lm.generate`` behave as before. ``use_jang_kernels(model, enabled=False)`` restores stock
MLX; the environment variable ``JANG_KERNELS=0`` turns the swap off globally (to compare).

Modules that jang cannot run (other quantization modes, no biases, unsupported widths) keep
stock MLX; so does any call on a GPU stream when this build has no GPU kernels.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from jang import load_extension
from jang.formats import BITS, GROUP_SIZES

__all__ = ["kernels_enabled", "use_jang_kernels"]


def kernels_enabled() -> bool:
    """False when ``JANG_KERNELS`` is set to 0 / false / off."""
    return os.environ.get("JANG_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no")


def _runs_here() -> bool:
    """jang's kernels serve this call: the CPU, or a GPU when the build has Metal or CUDA kernels."""
    ext = load_extension()
    if mx.default_device() == mx.cpu or ext.metal_enabled():
        return True
    cuda_enabled = getattr(ext, "cuda_enabled", None)  # absent from older builds
    return cuda_enabled is not None and cuda_enabled()


def _eligible(module: nn.Module) -> bool:
    return (
        getattr(module, "mode", "affine") == "affine"
        and module.get("biases") is not None
        and getattr(module, "bits", None) in BITS
        and getattr(module, "group_size", None) in GROUP_SIZES
        and getattr(module, "global_scale", None) is None
    )


class JangQuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear whose forward is ``jang.qmatmul``."""

    def __call__(self, x: mx.array) -> mx.array:
        if not _runs_here():
            return super().__call__(x)
        ext = load_extension()
        y = ext.qmatmul(
            x, self["weight"], self["scales"], self["biases"], self.bits, self.group_size
        )
        if "bias" in self:
            y = y + self["bias"]
        return y


class JangQuantizedEmbedding(nn.QuantizedEmbedding):
    """nn.QuantizedEmbedding whose ``as_linear`` (tied output head) is ``jang.qmatmul``."""

    def as_linear(self, x: mx.array) -> mx.array:
        if not _runs_here():
            return super().as_linear(x)
        ext = load_extension()
        return ext.qmatmul(
            x, self["weight"], self["scales"], self["biases"], self.bits, self.group_size
        )


_SWAPS: dict[type, type] = {
    nn.QuantizedLinear: JangQuantizedLinear,
    nn.QuantizedEmbedding: JangQuantizedEmbedding,
}

try:  # mlx-lm is optional for the kernels themselves
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwiGLU, SwitchGLU

    class JangQuantizedSwitchLinear(QuantizedSwitchLinear):
        """mlx-lm QuantizedSwitchLinear whose forward is ``jang.gather_qmm``."""

        def __call__(
            self, x: mx.array, indices: mx.array, sorted_indices: bool = False
        ) -> mx.array:
            if not _runs_here():
                return super().__call__(x, indices, sorted_indices)
            ext = load_extension()
            y = ext.gather_qmm(
                x,
                self["weight"],
                self["scales"],
                self["biases"],
                rhs_indices=indices,
                bits=self.bits,
                group_size=self.group_size,
            )
            if "bias" in self:
                y = y + mx.expand_dims(self["bias"][indices], -2)
            return y

    class JangSwitchGLU(SwitchGLU):
        """SwitchGLU whose gate, up and SwiGLU run as one ``jang.moe_gate_up`` pass.

        The primitive groups tokens by expert itself where that pays (the Metal
        sorted-token prefill path), so the caller never sorts tokens as the stock
        path does.
        """

        def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
            gate, up = self.gate_proj, self.up_proj
            if not _runs_here() or "bias" in gate or "bias" in up:
                return super().__call__(x, indices)
            ext = load_extension()
            indices = mx.stop_gradient(indices)
            h = ext.moe_gate_up(
                x,
                gate["weight"],
                gate["scales"],
                gate["biases"],
                up["weight"],
                up["scales"],
                up["biases"],
                indices,
                gate_bits=gate.bits,
                gate_group_size=gate.group_size,
                up_bits=up.bits,
                up_group_size=up.group_size,
            )
            y = self.down_proj(mx.expand_dims(h, -2), indices)
            return y.squeeze(-2)

    _SWAPS[QuantizedSwitchLinear] = JangQuantizedSwitchLinear
except ImportError:  # pragma: no cover - exercised only without mlx-lm
    SwitchGLU = None  # type: ignore[assignment,misc]


def _glu_eligible(module: nn.Module) -> bool:
    return (
        SwitchGLU is not None
        and type(module) is SwitchGLU
        and isinstance(module.activation, SwiGLU)
        and all(
            isinstance(p, QuantizedSwitchLinear) and _eligible(p)
            for p in (module.gate_proj, module.up_proj)
        )
    )


def use_jang_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Switch ``model``'s quantized modules to jang's kernels (or back to stock MLX).

    Args:
        model: any MLX module tree, e.g. an mlx-lm model after ``nn.quantize`` or a bundle
            load. Each module keeps its own bits and group size.
        enabled: False restores the stock MLX classes.

    Returns:
        The number of modules switched (to jang when enabled, back to stock otherwise).
        Nothing is switched to jang when ``JANG_KERNELS=0`` is set.
    """
    if enabled and not kernels_enabled():
        return 0
    stock_of = {v: k for k, v in _SWAPS.items()}
    if SwitchGLU is not None:
        stock_of[JangSwitchGLU] = SwitchGLU
    count = 0
    for _, module in model.named_modules():
        cls = type(module)
        if enabled:
            if cls in _SWAPS and _eligible(module):
                module.__class__ = _SWAPS[cls]
                count += 1
            elif _glu_eligible(module):
                module.__class__ = JangSwitchGLU
                count += 1
        elif cls in stock_of:
            module.__class__ = stock_of[cls]
            count += 1
    return count

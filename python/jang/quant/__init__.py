"""Quantizers: per-tensor b-bit group quantization in MLX's affine layout.

Every quantizer returns ``(wq, scales, biases)`` exactly as ``mx.quantize`` does: ``wq`` is
uint32 of shape (..., in * bits / 32), each row one little-endian bitstream of b-bit codes;
``scales`` and ``biases`` have shape (..., in / group_size) and the weight's dtype;
``w = scale * q + bias``. Any MLX runtime (``mx.dequantize``, ``nn.QuantizedLinear``,
``mlx_lm.load``) reads the output. Widths 2, 3, 4, 5, 6, 8; group sizes 32, 64, 128.

Tensor API (no calibration needed):

* ``quantize_tensor(w, bits, group_size, method="rtn", importance=None)
  -> (wq, scales, biases)``. ``"rtn"`` is bit-identical to ``mx.quantize``; ``"clip"``
  searches each group's range and refits scale/bias by least squares, optionally weighting
  input channel j by ``importance[j]`` (e.g. diag(X^T X) from `activation_importance`),
  and is never worse than RTN on any group.
  Without importance the clip search minimizes plain weight error, which is not the
  model's error: on SmolLM2-135M at 3 bits it lowered weight error yet raised perplexity
  over RTN, while with activation importance it beat RTN by far (bench/RESULTS.md). Pass
  importance whenever calibration text is available.
* ``relative_error(w, bits, group_size, method="rtn", importance=None) -> float``:
  ``||w - deq(quant(w))|| / ||w||`` of the tensor as stored (importance-weighted if
  given), computed block by block without materializing the quantized tensor.
* ``dequantize_tensor(wq, scales, biases, bits, group_size) -> mx.array``: same values
  as ``mx.dequantize``.
* ``pack(codes, bits)`` / ``unpack(wq, bits)``: the bit layout alone (numpy).

Calibrated API (calibration windows come from `jang.text.calibration_tokens`):

* ``gptq_model(model, plan, tokens, *, batch_size=8, block_size=128, damp=0.01,
  act_order=True, params="clip", replace=True) -> {path: (wq, scales, biases)}``:
  sequential GPTQ of an mlx-lm model; ``plan`` maps module paths to (bits, group_size).
* ``gptq_stream(model, plan, tokens, *, load_layer, finish_layer, float_weight, start=0,
  inputs=None)``: the same codes with one decoder layer in memory at a time (the caller
  fills each layer before it is quantized and takes its results after); resumable.
* ``gptq_quantize(w, hessian, bits, group_size, ...) -> (wq, scales, biases)``: one layer,
  given its Hessian (``Hessian`` accumulates ``2 X^T X / n`` from inputs).
* ``activation_importance(model, tokens) -> {path: diag(X^T X)}`` for every Linear.
* ``tune.tune_scales(teacher, student, quantized, widths, tokens)``: after any rounding,
  every group's scale and bias trained end to end against the float model (KL of the
  next-token distributions), codes frozen; torch models (the eval extra), imported on use.

Errors: bad input (NaN/Inf weights, empty tensors, a last dimension no group size
divides, unsupported bits/group size, non-float dtypes, unusable Hessians) raises
``QuantizationError`` (a ValueError) naming the problem. Documented fallbacks: dead
Hessian columns (an input that is always zero) keep their weight and are rounded
plainly; a Hessian that is not positive definite gets more damping (tenfold steps, up to
10x its mean diagonal) before it is rejected; a group whose importance is all zero keeps
RTN.
"""

import importlib

# name -> the module that defines it; imported on first use, so that the command line can
# read the method registry (`jang.quant.methods`) without loading MLX
_EXPORTS = {
    "BITS": "jang.formats",
    "GROUP_SIZES": "jang.formats",
    "Hessian": "jang.quant.gptq",
    "QuantizationError": "jang.errors",
    "activation_importance": "jang.quant.sequential",
    "dequantize_tensor": "jang.quant.tensor",
    "gptq_model": "jang.quant.sequential",
    "gptq_stream": "jang.quant.sequential",
    "gptq_quantize": "jang.quant.gptq",
    "pack": "jang.quant.packing",
    "quantize_tensor": "jang.quant.tensor",
    "relative_error": "jang.quant.tensor",
    "unpack": "jang.quant.packing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jang.quant' has no attribute {name!r}")

"""Tuning of group scales and biases against the float model, codes frozen: block-wise
(`tune_block`, the default: one decoder layer reproduces the float layer's outputs) or end
to end (`tune_scales`: the next-token KL through the whole model).

Rounding (rtn, clip, gptq) fixes every weight's code from that matrix alone. Tuning then
moves each group's ``scale`` and ``bias`` (the codes and the layout stay as they are) to
minimise KL(float model || quantized model) of the next-token distributions over
calibration windows, by gradient descent through the whole model (or, block-wise, each
layer's output error, layer by layer). The bundle keeps its
exact size and format; only the scale and bias values change. At 3 bits and below, where
per-matrix rounding leaves the model far from the float one, this is where most of the
remaining error goes (bench/RESULTS.md).

Each group's scale is trained as ``s0 * (1 + a)`` and its bias as ``b0 + s0 * c``, so one
learning rate suits groups of every magnitude and the start is the rounded model.
Optionally the normalization gains (float tensors of the bundle) are trained with them,
and, for experiments, the codes themselves (straight-through rounding, then repacked); at
the rates measured so far the codes barely move (bench/RESULTS.md, "Tuning recipes").
The forward and backward passes run in torch (float32, any device torch sees) on the
Hugging Face model built from the source config: torch and transformers (the ``eval``
extra) are needed here, never by the runtime. End to end, the float model and the
quantized one are both held in memory, in float32; block-wise, one layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from jang.errors import install_hint
from jang.quant.groups import QuantizationError
from jang.quant.methods import TuneOptions
from jang.quant.packing import pack

DEFAULT_CODE_LR = 5e-3


@dataclass
class TuneReport:
    """What tuning did: the mean training KL of the first and last epoch, and its cost."""

    steps: int
    windows: int
    seq_len: int
    epochs: int
    lr: float
    kl_first_epoch: float
    kl_last_epoch: float
    trainable: int
    codes_changed: int
    norms: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise QuantizationError(
            f"tuning runs in torch and needs the eval extra ({install_hint('eval')}): {exc}"
        ) from None
    return torch


def _affine_module(
    torch, codes: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, train_codes: bool
):
    """A parametrization returning ``s * q + b`` per group from trainable (a, c).

    With `train_codes` the codes are trainable too: a float ``u`` per weight, starting at
    its code, used as ``round(clamp(u))`` forward and as ``u`` backward (straight-through).
    """

    class GroupAffine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("q", torch.from_numpy(codes))
            self.register_buffer("s0", torch.from_numpy(scales))
            self.register_buffer("b0", torch.from_numpy(biases))
            self.a = torch.nn.Parameter(torch.zeros_like(self.s0))
            self.c = torch.nn.Parameter(torch.zeros_like(self.s0))
            self.u = torch.nn.Parameter(self.q.float()) if train_codes else None
            self.top = float(2**bits - 1)

        def scales_biases(self):
            return self.s0 * (1 + self.a), self.b0 + self.s0 * self.c

        def codes(self):
            if self.u is None:
                return self.q.float()
            u = self.u.clamp(0, self.top)
            return u + (u.round() - u).detach()

        def forward(self, _unused):
            s, b = self.scales_biases()
            rows, groups = s.shape
            w = self.codes().view(rows, groups, -1) * s[..., None] + b[..., None]
            return w.view(rows, -1)

    return GroupAffine()


def _codes(wq: mx.array, scales: mx.array, bits: int, group_size: int) -> np.ndarray:
    """The integer codes of a packed weight, as uint8 (rows, in)."""
    ones = mx.ones(scales.shape, dtype=mx.float32)
    q = mx.dequantize(wq, ones, mx.zeros_like(ones), group_size=group_size, bits=bits)
    return np.array(q.astype(mx.uint8))


def _float32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def _owners(model) -> dict[int, list[tuple[Any, str]]]:
    """id(parameter) -> every (module, name) holding it (a tied head shares the embedding)."""
    owners: dict[int, list[tuple[Any, str]]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, name))
    return owners


def _attach(torch, model, quantized, bits_groups, train_codes: bool = False) -> dict[str, Any]:
    """Replace each quantized module's weight of `model` by its group-affine function."""
    from torch.nn.utils import parametrize

    modules = dict(model.named_modules())
    owners = _owners(model)
    # where a weight is only a shape (meta), its function goes where the model's data is
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), "cpu")
    affines = {}
    for name, (wq, s, b) in quantized.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise QuantizationError(f"tuning: the model has no weight for {name}")
        bits, group_size = bits_groups[name]
        codes = _codes(wq, s, bits, group_size)
        if codes.shape != tuple(module.weight.shape):
            raise QuantizationError(
                f"tuning: {name} has codes {codes.shape}, model weight {tuple(module.weight.shape)}"
            )
        affine = _affine_module(torch, codes, _float32(s), _float32(b), bits, train_codes)
        affine.to(device if module.weight.device.type == "meta" else module.weight.device)
        for holder, attr in owners[id(module.weight)]:
            setattr(holder, attr, torch.nn.Parameter(torch.empty(0), requires_grad=False))
            parametrize.register_parametrization(holder, attr, affine, unsafe=True)
        affines[name] = affine
    return affines


class _Trainer:
    """Adam over the affines' (a, c), optionally their codes and the norm gains, with the
    learning rate decayed to zero over all `steps` on a cosine."""

    def __init__(self, torch, affines, norms, lr, steps, train_codes=False, code_lr=0.0):
        self.torch, self.steps, self.done = torch, steps, 0
        self.groups = [{"params": [p for a in affines.values() for p in (a.a, a.c)], "lr": lr}]
        if train_codes:
            self.groups.append({"params": [a.u for a in affines.values()], "lr": code_lr})
        if norms:
            for p in norms.values():
                p.requires_grad_(True)
            self.groups.append({"params": list(norms.values()), "lr": lr})
        for group in self.groups:
            group["base_lr"] = group["lr"]
        self.opt = torch.optim.Adam(self.groups)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for g in self.groups for p in g["params"])

    def step(self, loss, what: str) -> float:
        """One update on `loss`; returns its value. A non-finite loss stops tuning."""
        if not self.torch.isfinite(loss):
            raise QuantizationError(f"tuning {what} diverged at step {self.done} ({float(loss)})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.opt.param_groups:
            group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * self.done / self.steps))
        self.opt.step()
        self.done += 1
        return float(loss.detach())


def _results(torch, affines, quantized, bits_groups, train_codes: bool):
    """({module: (wq, scales, biases)} as trained, number of codes that moved)."""
    out, changed = {}, 0
    with torch.no_grad():
        for name, affine in affines.items():
            s, b = affine.scales_biases()
            wq = quantized[name][0]
            if train_codes:
                codes = affine.codes().to(torch.uint8)
                changed += int((codes != affine.q).sum())
                wq = mx.array(pack(codes.cpu().numpy(), bits_groups[name][0]))
            out[name] = (wq, mx.array(s.cpu().numpy()), mx.array(b.cpu().numpy()))
    return out, changed


def _check_epochs(epochs: int) -> None:
    if epochs < 1:
        raise QuantizationError(f"tuning needs at least one epoch, got {epochs}")


def tune_scales(
    teacher,
    student,
    quantized: dict[str, tuple[mx.array, mx.array, mx.array]],
    bits_groups: dict[str, tuple[int, int]],
    tokens: np.ndarray,
    *,
    epochs: int = TuneOptions.epochs,
    lr: float = TuneOptions.lr,
    train_codes: bool = False,
    code_lr: float = DEFAULT_CODE_LR,
    train_norms: bool = False,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[dict[str, tuple[mx.array, mx.array, mx.array]], dict[str, np.ndarray], TuneReport]:
    """Tune the scales and biases of `quantized` ({module: (wq, scales, biases)}).

    `teacher` and `student` are two float32 torch copies of the float model (the student's
    quantized weights are replaced here); `tokens` (n, seq_len) are the calibration
    windows. `train_codes` lets the codes move too (straight-through rounding, Adam at
    `code_lr` in code units); `train_norms` tunes the float normalization gains. Returns
    the same dict with float32 scales and biases (and repacked codes), the tuned float
    tensors by source name (the norms, else empty), and a report; `progress(step, steps,
    kl)` is called after every step.
    """
    torch = _torch()
    _check_epochs(epochs)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[0] < 1:
        raise QuantizationError(f"tuning needs (n, seq_len) windows, got {tokens.shape}")
    t0 = time.perf_counter()
    for p in (*teacher.parameters(), *student.parameters()):
        p.requires_grad_(False)
    teacher.eval()
    student.eval()
    affines = _attach(torch, student, quantized, bits_groups, train_codes)
    norms = _norm_gains(student) if train_norms else {}
    steps = epochs * tokens.shape[0]
    trainer = _Trainer(torch, affines, norms, lr, steps, train_codes, code_lr)
    device = next(teacher.parameters()).device
    epoch_kl = []
    for epoch in range(epochs):
        total = 0.0
        for i in np.random.default_rng(seed + epoch).permutation(tokens.shape[0]):
            ids = torch.from_numpy(tokens[i])[None].to(device)
            with torch.no_grad():
                ref = teacher(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
            out = student(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
            kl = trainer.step((ref.exp() * (ref - out)).sum(-1).mean(), "(KL)")
            total += kl
            if progress is not None:
                progress(trainer.done, steps, kl)
        epoch_kl.append(total / tokens.shape[0])
    out, changed = _results(torch, affines, quantized, bits_groups, train_codes)
    floats = {name: p.detach().cpu().numpy().copy() for name, p in norms.items()}
    report = TuneReport(
        steps=steps,
        windows=int(tokens.shape[0]),
        seq_len=int(tokens.shape[1]),
        epochs=epochs,
        lr=lr,
        kl_first_epoch=epoch_kl[0],
        kl_last_epoch=epoch_kl[-1],
        trainable=trainer.trainable,
        codes_changed=changed,
        norms=len(norms),
        seconds=time.perf_counter() - t0,
    )
    return out, floats, report


@dataclass
class BlockReport:
    """One block's tuning: its output error relative to the float block's (mean squared
    error over the target's mean square) in the first and the last epoch."""

    error_first_epoch: float
    error_last_epoch: float
    trainable: int


def tune_block(
    block,
    run: Callable[[Any, Any], Any],
    quantized: dict[str, tuple[mx.array, mx.array, mx.array]],
    bits_groups: dict[str, tuple[int, int]],
    inputs,
    targets,
    *,
    epochs: int = TuneOptions.epochs,
    lr: float = TuneOptions.lr,
    train_norms: bool = False,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> tuple[dict[str, tuple[mx.array, mx.array, mx.array]], dict[str, np.ndarray], BlockReport]:
    """Tune one block's group scales and biases (codes frozen) so that the quantized block,
    fed the quantized model's own activations `inputs` (n, seq, hidden), reproduces
    `targets`, the float block's outputs on the float model's activations: the block-wise
    objective of AutoRound / OmniQuant, which needs one block in memory, not the model.

    `block` is a torch module holding float32 weights (its quantized ones are replaced
    here by their group-affine functions, which stay attached: run the block again for
    its tuned outputs, then `detach`); `run(block, x)` calls it on one window (1, seq,
    hidden). `quantized` and `bits_groups` are keyed by module paths inside the block;
    `train_norms` also tunes its normalization gains. Returns the tuned parts, the tuned
    gains by their path in the block, and a report; `progress(error)` after every step.
    """
    torch = _torch()
    _check_epochs(epochs)
    for p in block.parameters():
        p.requires_grad_(False)
    affines = _attach(torch, block, quantized, bits_groups)
    norms = _norm_gains(block) if train_norms else {}
    n = int(inputs.shape[0])
    trainer = _Trainer(torch, affines, norms, lr, epochs * n)
    epoch_error = []
    for epoch in range(epochs):
        total = 0.0
        for i in np.random.default_rng(seed + epoch).permutation(n):
            target = targets[i : i + 1]
            out = run(block, inputs[i : i + 1])
            loss = (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-30)
            error = trainer.step(loss, "a block (output error)")
            total += error
            if progress is not None:
                progress(error)
        epoch_error.append(total / n)
    out, _ = _results(torch, affines, quantized, bits_groups, False)
    floats = {name: p.detach().cpu().numpy().copy() for name, p in norms.items()}
    for p in norms.values():
        p.requires_grad_(False)
    return out, floats, BlockReport(epoch_error[0], epoch_error[-1], trainer.trainable)


def detach(model) -> None:
    """Remove the group-affine functions `_attach` put on `model`'s modules, with the
    buffers (codes, scales, biases) they hold."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)


def _norm_gains(model) -> dict[str, Any]:
    """The model's normalization gains (1-D float parameters of its norm layers), by name."""
    return {
        name: p
        for name, p in model.named_parameters()
        if p.ndim == 1 and "norm" in name.lower() and "parametrizations" not in name
    }

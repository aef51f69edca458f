"""The finished layers of a streamed GPTQ or block-wise tuning, on disk beside OUT: what
keeps memory flat and what `jang convert --resume` continues from.

``.OUT.jang-gptq/`` (``.OUT.jang-tune/``) holds one ``layer-NNNNN.safetensors`` per finished
decoder layer (each planned module's codes, scales and biases, and tuned float tensors),
``inputs.safetensors`` (the calibration activations entering the next layer, saved at
most every `CHECKPOINT_SECONDS` and at the end) and ``state.json`` (what the run was, and
the first layer those inputs enter). A run of a different plan, calibration text, options
or jang version does not match its key and is never resumed. The directory is removed
once the bundle is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from jang.errors import ConversionError

CHECKPOINT_SECONDS = 120.0
KINDS = ("gptq", "tune")
_PARTS = ("weight", "scales", "biases")
_FLOAT = "float:"  # key prefix of a tuned float tensor in a layer file


def spill_dir(out: Path, kind: str = "gptq") -> Path:
    if kind not in KINDS:
        raise ValueError(f"no checkpoint kind {kind!r}")
    return out.parent / f".{out.name}.jang-{kind}"


def run_key(**facts: Any) -> str:
    """A digest of everything the codes depend on (plan, tokens, options, version)."""
    blob = json.dumps(facts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _atomic_save(path: Path, arrays: dict[str, mx.array], metadata=None) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.safetensors")
    mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """The spill directory of one conversion (see the module docstring)."""

    def __init__(self, out: Path, kind: str = "gptq", every: float | None = None):
        self.kind = kind
        self.dir = spill_dir(Path(out), kind)
        self.key = ""
        self.every = CHECKPOINT_SECONDS if every is None else every
        self._last_save = time.monotonic()
        self._layers: dict[str, int] = {}  # module path -> layer file it is in

    # ---------------------------------------------------------------- start ----

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def refuse_kept(self, resume: bool) -> None:
        """Refuse to start over a run that saved layers, unless resuming: hours of work
        are never dropped silently (called before planning, and by `begin`)."""
        state = self.state()
        done = int(state.get("next_layer", 0)) if state else 0
        if done and not resume:
            raise ConversionError(
                f"{self.dir} holds an interrupted {self.label} of this output ({done} layers "
                "saved): pass --resume to continue it, or delete that directory to start over"
            )

    def begin(self, key: str, resume: bool) -> int:
        """Prepare the directory for the run `key` (`run_key`); returns the layer to start
        at (0 unless resuming)."""
        self.key = key
        self.refuse_kept(resume)
        state = self.state()
        done = int(state.get("next_layer", 0)) if state else 0
        if resume and done:
            if state.get("key") != self.key:
                raise ConversionError(
                    f"--resume: {self.dir} was made by a different conversion (plan, "
                    "calibration or jang version); delete it to start over"
                )
            inputs = self.dir / "inputs.safetensors"
            if not inputs.is_file():
                raise ConversionError(f"--resume: {self.dir} lacks inputs.safetensors")
            _, metadata = mx.load(str(inputs), return_metadata=True)
            if metadata.get("next_layer") != str(done):
                raise ConversionError(
                    f"--resume: {inputs} enters layer {metadata.get('next_layer')} but "
                    f"state.json says {done} (interrupted between the two writes); delete "
                    f"{self.dir} to start over"
                )
            for layer in range(done):
                if not self._layer_file(layer).is_file():
                    raise ConversionError(f"--resume: {self._layer_file(layer)} is missing")
                self._index(layer)
            return done
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._write_state(0)
        return 0

    @property
    def label(self) -> str:
        return {"gptq": "GPTQ", "tune": "block-wise tuning"}[self.kind]

    def inputs(self) -> dict[str, mx.array]:
        """The saved activations entering the layer to resume at, by the names they were
        saved under (`save_layer`'s outputs)."""
        return mx.load(str(self.dir / "inputs.safetensors"))

    # ------------------------------------------------------------ per layer ----

    def _layer_file(self, layer: int) -> Path:
        return self.dir / f"layer-{layer:05d}.safetensors"

    def _index(self, layer: int) -> None:
        for name in mx.load(str(self._layer_file(layer))):
            if not name.startswith(_FLOAT):
                self._layers[name.rsplit(".", 1)[0]] = layer

    def save_layer(
        self,
        layer: int,
        results: dict[str, tuple],
        outputs: dict[str, mx.array] | Callable[[], dict[str, mx.array]],
        last: bool,
        floats: dict[str, mx.array] | None = None,
        stats: dict[str, float] | None = None,
    ) -> None:
        """Keep a finished layer's results (and tuned float tensors by name); every `every`
        seconds (and after the last layer) also its outputs, the named activations a
        resumed run starts the next layer from (or a function making them, called only
        then). `stats` are numbers about the layer, kept for the run's report."""
        arrays = {
            f"{path}.{part}": a
            for path, q in results.items()
            for part, a in zip(_PARTS, q, strict=True)
        }
        arrays.update((_FLOAT + name, a) for name, a in (floats or {}).items())
        _atomic_save(
            self._layer_file(layer), arrays, {k: repr(float(v)) for k, v in (stats or {}).items()}
        )
        for path in results:
            self._layers[path] = layer
        now = time.monotonic()
        if last or now - self._last_save >= self.every:
            _atomic_save(  # the layer they enter, checked on resume against state.json
                self.dir / "inputs.safetensors",
                outputs() if callable(outputs) else outputs,
                {"next_layer": str(layer + 1)},
            )
            self._write_state(layer + 1)
            self._last_save = now

    def _write_state(self, next_layer: int) -> None:
        tmp = self.dir / f".state.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"key": self.key, "next_layer": next_layer}))
        os.replace(tmp, self.dir / "state.json")

    # -------------------------------------------------------------- results ----

    def __contains__(self, path: str) -> bool:
        return path in self._layers

    def load(self, path: str) -> tuple[mx.array, mx.array, mx.array]:
        """One module's (wq, scales, biases), read from its layer file."""
        saved = mx.load(str(self._layer_file(self._layers[path])))
        return tuple(saved[f"{path}.{part}"] for part in _PARTS)

    def floats(self) -> dict[str, mx.array]:
        """Every tuned float tensor of the saved layers, by name."""
        out = {}
        for path in sorted(self.dir.glob("layer-*.safetensors")):
            for name, a in mx.load(str(path)).items():
                if name.startswith(_FLOAT):
                    out[name.removeprefix(_FLOAT)] = a
        return out

    def stats(self) -> list[dict[str, float]]:
        """The `stats` of every saved layer, in layer order."""
        out = []
        for path in sorted(self.dir.glob("layer-*.safetensors")):
            _, metadata = mx.load(str(path), return_metadata=True)
            out.append({k: float(v) for k, v in metadata.items()})
        return out

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

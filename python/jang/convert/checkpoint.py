"""The finished layers of a streamed GPTQ, on disk beside OUT: what keeps memory flat and
what `jang convert --resume` continues from.

``.OUT.jang-gptq/`` holds one ``layer-NNNNN.safetensors`` per finished decoder layer (each
planned module's codes, scales and biases), ``inputs.safetensors`` (the calibration
activations entering the next layer, saved at most every `CHECKPOINT_SECONDS` and at the
end) and ``state.json`` (what the run was, and the first layer those inputs enter). A
run of a different plan, calibration text or jang version does not match its key and is
never resumed. The directory is removed once the bundle is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

from jang.errors import ConversionError

CHECKPOINT_SECONDS = 120.0
SUFFIX = ".jang-gptq"
_PARTS = ("weight", "scales", "biases")


def spill_dir(out: Path) -> Path:
    return out.parent / f".{out.name}{SUFFIX}"


def run_key(**facts: Any) -> str:
    """A digest of everything the codes depend on (plan, tokens, options, version)."""
    blob = json.dumps(facts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _atomic_save(path: Path, arrays: dict[str, mx.array]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.safetensors")
    mx.save_safetensors(str(tmp), arrays)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """The spill directory of one conversion (see the module docstring)."""

    def __init__(self, out: Path, every: float | None = None):
        self.dir = spill_dir(Path(out))
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

    def begin(self, key: str, resume: bool) -> int:
        """Prepare the directory for the run `key` (`run_key`); returns the layer to start
        at (0 unless resuming)."""
        self.key = key
        state = self.state()
        done = int(state.get("next_layer", 0)) if state else 0
        if done and not resume:
            raise ConversionError(
                f"{self.dir} holds an interrupted GPTQ of this output ({done} layers saved): "
                "pass --resume to continue it, or delete that directory to start over"
            )
        if resume and done:
            if state.get("key") != self.key:
                raise ConversionError(
                    f"--resume: {self.dir} was made by a different conversion (plan, "
                    "calibration or jang version); delete it to start over"
                )
            if not (self.dir / "inputs.safetensors").is_file():
                raise ConversionError(f"--resume: {self.dir} lacks inputs.safetensors")
            for layer in range(done):
                if not self._layer_file(layer).is_file():
                    raise ConversionError(f"--resume: {self._layer_file(layer)} is missing")
                self._index(layer)
            return done
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._write_state(0)
        return 0

    def inputs(self) -> list[mx.array]:
        """The saved activations entering the layer to resume at, one array per batch."""
        saved = mx.load(str(self.dir / "inputs.safetensors"))
        return [saved[str(i)] for i in range(len(saved))]

    # ------------------------------------------------------------ per layer ----

    def _layer_file(self, layer: int) -> Path:
        return self.dir / f"layer-{layer:05d}.safetensors"

    def _index(self, layer: int) -> None:
        for name in mx.load(str(self._layer_file(layer))):
            self._layers[name.rsplit(".", 1)[0]] = layer

    def save_layer(
        self, layer: int, results: dict[str, tuple], outputs: list[mx.array], last: bool
    ) -> None:
        """Keep a finished layer's results; every `every` seconds (and after the last
        layer) also its outputs, so a resumed run starts at the next layer."""
        arrays = {
            f"{path}.{part}": a
            for path, q in results.items()
            for part, a in zip(_PARTS, q, strict=True)
        }
        _atomic_save(self._layer_file(layer), arrays)
        for path in results:
            self._layers[path] = layer
        now = time.monotonic()
        if last or now - self._last_save >= self.every:
            _atomic_save(
                self.dir / "inputs.safetensors", {str(i): h for i, h in enumerate(outputs)}
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

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

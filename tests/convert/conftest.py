"""Fixtures of the streamed conversion tests: a 4-layer tiny llama and a calibration text."""

import pytest

from jang.quant.methods import Calibration
from tiny_model import make_model_dir


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("deep") / "tiny", layers=4)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text(" ".join(f"w{(i * 7) % 50}" for i in range(3000)))
    return Calibration(text, samples=6, seq_len=24)


class Killer:
    """Wraps `Checkpoint.save_layer`: records the layers of `kind` saved and, while `armed`,
    raises KeyboardInterrupt right after saving its layer 1 (a conversion killed there).
    Activations are saved after every layer, so a resumed run starts at layer 2."""

    def __init__(self, monkeypatch, kind: str):
        from jang.convert import checkpoint

        self.kind, self.armed, self.layers = kind, True, []
        save = checkpoint.Checkpoint.save_layer

        def save_layer(saved, layer, *args, **kwargs):
            save(saved, layer, *args, **kwargs)
            if saved.kind == self.kind:
                self.layers.append(layer)
                if layer == 1 and self.armed:
                    raise KeyboardInterrupt

        monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)
        monkeypatch.setattr(checkpoint.Checkpoint, "save_layer", save_layer)


@pytest.fixture
def killer(monkeypatch):
    return lambda kind: Killer(monkeypatch, kind)

import mlx.core as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random llama (tests/tiny_model.py) as an HF directory."""
    from tiny_model import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("src") / "tiny")


@pytest.fixture(scope="module")
def converted(model_dir, tmp_path_factory):
    """`model_dir` converted at 3.0 bpw with rtn (read it; copy it to change it)."""
    from jang import convert

    out = tmp_path_factory.mktemp("out") / "bundle"
    convert.convert(model_dir, out, bits=3.0, method="rtn", progress="quiet")
    return out

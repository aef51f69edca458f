"""Installation layout: the extension loads in a fresh interpreter, RPATHs are relative."""

import subprocess
import sys
from pathlib import Path

import pytest

import jang


def test_fresh_interpreter_imports_extension():
    code = "import jang, jang._ext; print(jang._ext.mlx_version_built())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.32.4"


def test_extension_can_be_imported_first():
    # jang._ext alone (before jang.dequantize's lazy import) must still work.
    code = (
        "import jang._ext as e, mlx.core as mx;"
        "q, s, b = mx.quantize(mx.ones((1, 64)), group_size=64, bits=4);"
        "print(e.dequantize(q, s, b, 4, 64).sum().item())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == 64.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF RUNPATH check is Linux-only")
def test_runpaths_are_relative():
    ext = Path(jang.load_extension().__file__)
    for lib, expected in [
        (ext, "$ORIGIN/../mlx/lib"),
        (ext.parent / "lib" / "libjang.so", "$ORIGIN/../../mlx/lib"),
    ]:
        result = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        runpath = [
            line for line in result.stdout.splitlines() if "RUNPATH" in line or "RPATH" in line
        ]
        assert runpath, f"{lib.name} has no RUNPATH"
        assert expected in runpath[0]
        assert "/tmp" not in runpath[0] and "site-packages" not in runpath[0]


def test_public_headers_installed():
    include = Path(jang.__file__).parent / "include" / "jang"
    for header in ("ops.h", "primitives.h", "affine.h"):
        assert (include / header).is_file()


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jang.nope  # noqa: B018

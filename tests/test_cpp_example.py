"""examples/cpp builds against the installed package and runs (native embedding)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jang import cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cpp"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
def test_cpp_example_builds_and_runs(tmp_path):
    build = tmp_path / "build"
    configure = subprocess.run(
        [
            "cmake",
            "-S",
            str(EXAMPLE),
            "-B",
            str(build),
            f"-Djang_DIR={cli.cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compile_ = subprocess.run(
        ["cmake", "--build", str(build)], capture_output=True, text=True, timeout=600
    )
    assert compile_.returncode == 0, compile_.stdout + compile_.stderr
    exe = build / ("dequantize_example.exe" if sys.platform == "win32" else "dequantize_example")
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("bit-exact with mx::dequantize: yes") == 6

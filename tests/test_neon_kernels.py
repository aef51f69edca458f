"""The CPU matmul kernels on raw pointers, without MLX (tests/neon/qmm_isa_test.cpp):
the NEON kernels built for aarch64 with a cross compiler and run under qemu user
emulation (there is no ARM machine here), and on x86-64 the AVX2 / AVX-512 kernels, each
against the scalar reference for every width x group size x M in (1, 5, 16), with the
weight rows ending at an inaccessible page."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU = ROOT / "csrc" / "cpu"
HARNESS = ROOT / "tests" / "neon" / "qmm_isa_test.cpp"
FLAGS = ["-std=c++20", "-O1", "-ffp-contract=off", "-Wall", "-Wextra"]
FLAGS += [f"-I{ROOT / 'csrc'}"]
COMMON = [str(HARNESS), str(CPU / "cpu_features.cpp"), str(CPU / "qmm_scalar.cpp")]
HOST = platform.machine().lower()
NATIVE_ARM = HOST in ("aarch64", "arm64")


def _aarch64_toolchain() -> tuple[str | None, list[str]]:
    """(compiler, runner prefix) for aarch64 binaries; compiler None when missing."""
    if NATIVE_ARM:
        return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++"), []
    cxx = shutil.which(os.environ.get("JANG_AARCH64_CXX", "aarch64-linux-gnu-g++"))
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if cxx is None or qemu is None:
        return None, []
    return cxx, [qemu]


CXX, RUNNER = _aarch64_toolchain()


def _build_and_run(cmd: list[str], runner: list[str], exe: Path) -> str:
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert ", 0 failures" in out, out
    return out


@pytest.mark.skipif(
    CXX is None,
    reason="no aarch64 cross toolchain and qemu user emulation "
    "(apt-get install -y g++-aarch64-linux-gnu qemu-user); .ci/run installs them",
)
def test_neon_kernels_match_scalar_under_qemu(tmp_path):
    exe = tmp_path / "qmm_isa_test"
    # Static: qemu then needs no aarch64 sysroot to load it.
    static = [] if NATIVE_ARM else ["-static"]
    cmd = [CXX, *FLAGS, "-Werror", *static, *COMMON, str(CPU / "qmm_neon.cpp"), "-o", str(exe)]
    out = _build_and_run(cmd, RUNNER, exe)
    assert "simd level neon, auto isa neon" in out, out
    assert "isas: scalar neon; 54 qmm cases" in out, out


@pytest.mark.skipif(
    HOST not in ("x86_64", "amd64") or shutil.which("g++") is None,
    reason="the x86 SIMD kernels need an x86-64 host with g++",
)
def test_x86_kernels_match_scalar(tmp_path):
    objs = []
    for name, isa_flags in [
        ("qmm_avx2", ["-mavx2", "-mfma", "-mf16c"]),
        ("qmm_avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]),
    ]:
        obj = tmp_path / f"{name}.o"
        # (no -Werror here: GCC 12's AVX-512 headers warn about themselves)
        cmd = ["g++", *FLAGS, *isa_flags, "-c", str(CPU / f"{name}.cpp"), "-o", str(obj)]
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert build.returncode == 0, build.stdout + build.stderr
        objs.append(str(obj))
    exe = tmp_path / "qmm_isa_test"
    cmd = ["g++", *FLAGS, "-DJANG_TEST_X86_SIMD", *COMMON, *objs, "-o", str(exe)]
    out = _build_and_run(cmd, [], exe)
    assert "54 qmm cases" in out, out

"""Driver of the Metal emulation: builds a .metal source with clang as C++ against
metal_emu.h, and runs its kernel instantiations over a grid on numpy buffers.

Every buffer travels with 256 guard bytes on each side, filled with 0x7F (3.4e38 as
float32 and bfloat16, NaN as float16, arbitrary codes in packed words): a kernel that
reads past a buffer computes garbage, one that writes past it is reported. Output
buffers start as 0xFF bytes (NaN), so an element a kernel forgets to write shows.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
METAL_DIR = ROOT / "csrc" / "metal"
GUARD = 256
GUARD_BYTE = 0x7F
POISON = 0xFF

# Orders in which the threads of a threadgroup take turns (see metal_emu.h).
ASCENDING, DESCENDING, SHUFFLED = 0, 1, 2

_BINDINGS = [
    "buffer",
    "threadgroup",
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
    "thread_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
    "simdgroups_per_threadgroup",
    "threads_per_simdgroup",
]


class EmulationError(RuntimeError):
    """The emulated kernel did something a GPU would not survive (or not do right)."""


def clang() -> str | None:
    """The clang++ the emulation compiles with (JANG_CLANG overrides), or None."""
    for name in (os.environ.get("JANG_CLANG"), "clang++", "clang++-14", "clang++-15"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _strip_comments(source: str) -> str:
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def _split_params(text: str) -> list[str]:
    params, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        elif ch == "," and depth == 0:
            params.append(text[start:i])
            start = i + 1
    params.append(text[start:])
    return [p.strip() for p in params if p.strip()]


def kernel_signatures(source: str) -> dict[str, list[tuple[str, int]]]:
    """For each `[[kernel]] void name(...)` in a shader, the binding of every parameter
    in order, read from its attribute: ("buffer", 3), ("thread_position_in_grid", 0)."""
    text = _strip_comments(source)
    out: dict[str, list[tuple[str, int]]] = {}
    for m in re.finditer(r"\[\[\s*kernel\s*\]\]\s*void\s+(\w+)\s*\(", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        binds = []
        for param in _split_params(text[m.end() : i - 1]):
            a = re.search(r"\[\[\s*(\w+)\s*(?:\(\s*(\d+)\s*\))?\s*\]\]\s*$", param)
            if a is None or a.group(1) not in _BINDINGS:
                raise ValueError(f"{m.group(1)}: parameter without a known attribute: {param}")
            binds.append((a.group(1), int(a.group(2) or 0)))
        out[m.group(1)] = binds
    if not out:
        raise ValueError("no [[kernel]] functions in the source")
    return out


def _translation_unit(source_path: Path, source: str) -> str:
    lines = ['#include "jang_emu_plan.h"', f'#include "{source_path}"', ""]
    for name, binds in kernel_signatures(source).items():
        # Bind values by number: `threadgroup` is a macro once the shader is included.
        items = ", ".join(
            f"{{static_cast<::jang_emu::Bind>({_BINDINGS.index(b)}), {i}}}" for b, i in binds
        )
        lines.append(
            f'static ::jang_emu::ParamTable jang_emu_params_{name}("{name}", {{{items}}});'
        )
    return "\n".join(lines) + "\n"


def _compile_command(compiler: str, tu: Path, lib: Path) -> list[str]:
    return [
        compiler,
        "-std=c++20",
        "-O0",
        "-fPIC",
        "-shared",
        "-pthread",
        "-ffp-contract=off",
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unknown-attributes",
        "-Wno-unused-parameter",
        "-Wno-deprecated-volatile",
        "-DJANG_EMU_MAIN",
        f"-I{HERE / 'include'}",
        f"-I{HERE}",
        f"-I{ROOT / 'csrc'}",
        f"-I{METAL_DIR}",
        "-x",
        "c++",
        str(tu),
        "-o",
        str(lib),
    ]


@dataclass
class Library:
    """One compiled shader source: its kernel instantiations, runnable by host name."""

    path: Path
    lib: ctypes.CDLL

    def kernel_names(self) -> list[str]:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            need = self.lib.jang_emu_kernel_names(buf, size)
            if need == 0:
                return buf.value.decode().split()
            size = need

    def run(
        self,
        name: str,
        buffers: Sequence[np.ndarray],
        groups: Sequence[int],
        threads: Sequence[int],
        threadgroup_bytes: Sequence[int] = (),
        order: int = ASCENDING,
        seed: int = 0,
    ) -> None:
        """Run kernel `name` over `groups` threadgroups of `threads` threads with
        buffer(i) = buffers[i] (written back in place). Raises EmulationError on a
        deadlock, divergent SIMD operations or an out-of-bounds write."""
        padded = []
        pointers = (ctypes.c_void_p * max(1, len(buffers)))()
        for i, a in enumerate(buffers):
            assert a.flags.c_contiguous, f"buffer {i} must be C-contiguous"
            raw = np.full(a.nbytes + 2 * GUARD, GUARD_BYTE, np.uint8)
            raw[GUARD : GUARD + a.nbytes] = a.reshape(-1).view(np.uint8)
            padded.append(raw)
            pointers[i] = raw.ctypes.data + GUARD
        g = (ctypes.c_uint * 3)(*[*groups, 1, 1][:3])
        t = (ctypes.c_uint * 3)(*[*threads, 1, 1][:3])
        tg = (ctypes.c_ulong * max(1, len(threadgroup_bytes)))(*threadgroup_bytes)
        err = ctypes.create_string_buffer(4096)
        rc = self.lib.jang_emu_launch(
            name.encode(),
            pointers,
            len(buffers),
            g,
            t,
            tg,
            len(threadgroup_bytes),
            order,
            seed,
            err,
            len(err),
        )
        if rc:
            raise EmulationError(f"{name}: {err.value.decode()}")
        for i, (a, raw) in enumerate(zip(buffers, padded, strict=True)):
            guards = np.concatenate([raw[:GUARD], raw[GUARD + a.nbytes :]])
            if np.any(guards != GUARD_BYTE):
                raise EmulationError(f"{name}: out-of-bounds write around buffer({i})")
            a.reshape(-1).view(np.uint8)[:] = raw[GUARD : GUARD + a.nbytes]


class Dispatch(ctypes.Structure):
    """csrc/metal/plan.h's Dispatch: kernel name, grid, threadgroup size and memory."""

    _fields_: ClassVar = [
        ("kernel", ctypes.c_char * 96),
        ("groups", ctypes.c_uint * 3),
        ("threads", ctypes.c_uint * 3),
        ("threadgroup_bytes", ctypes.c_ulong * 2),
    ]

    def launch_args(self) -> dict:
        tg = [b for b in self.threadgroup_bytes if b]
        return {
            "name": self.kernel.decode(),
            "groups": list(self.groups),
            "threads": list(self.threads),
            "threadgroup_bytes": tg,
        }


DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
# How many leading int arguments (bits, dtype codes) each plan function takes.
_PLAN_INTS = {"dequantize": 2, "qmatmul": 3, "gather_qmm": 3, "moe_gate_up": 3, "moe_route": 0}


def plan(lib: Library, op: str, *args: int) -> Dispatch:
    """The host's launch plan for `op` (jang_emu_plan_<op> in jang_emu_plan.h)."""
    d = Dispatch()
    fn = getattr(lib.lib, f"jang_emu_plan_{op}")
    ints = _PLAN_INTS[op]  # leading int arguments, then int64 sizes
    c_args = [ctypes.c_int(a) for a in args[:ints]] + [ctypes.c_long(a) for a in args[ints:]]
    fn(*c_args, ctypes.byref(d))
    return d


def use_sorted(lib: Library, rows: int, experts: int) -> bool:
    """The host's choice between the gathered and the sorted MoE paths."""
    return bool(lib.lib.jang_emu_plan_use_sorted(ctypes.c_long(rows), ctypes.c_long(experts)))


def build(sources: Sequence[Path], cache: Path) -> dict[str, Library]:
    """Compile each shader source once (two at a time) into `cache`, keyed by the hash
    of everything it includes that lives in this repository."""
    compiler = clang()
    if compiler is None:
        raise RuntimeError("clang++ not found")
    cache.mkdir(parents=True, exist_ok=True)
    deps = sorted([*METAL_DIR.glob("*.h"), *HERE.glob("*.h"), ROOT / "csrc" / "jang" / "affine.h"])

    def one(src: Path) -> tuple[str, Library]:
        source = src.read_text()
        h = hashlib.sha256(source.encode())
        for d in deps:
            h.update(d.read_bytes())
        key = h.hexdigest()[:16]
        lib = cache / f"{src.stem}-{key}.so"
        if not lib.exists():
            tu = cache / f"{src.stem}-{key}.cpp"
            tu.write_text(_translation_unit(src.resolve(), source))
            res = subprocess.run(
                _compile_command(compiler, tu, lib), capture_output=True, text=True
            )
            if res.returncode:
                raise RuntimeError(f"emulation build of {src.name} failed:\n{res.stderr}")
        cdll = ctypes.CDLL(str(lib))
        cdll.jang_emu_launch.restype = ctypes.c_int
        cdll.jang_emu_kernel_names.restype = ctypes.c_int
        return str(src), Library(src, cdll)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, sources))


def poisoned(shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """An output buffer full of the guard pattern (NaN for floats)."""
    a = np.empty(tuple(shape), dtype)
    a.reshape(-1).view(np.uint8)[:] = POISON
    return a

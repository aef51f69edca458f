"""jang's Metal kernels, executed on Linux by the Metal emulation (metal_emu.h) and
compared with the CPU reference, over the grids the host code (metal/plan.h) uses.

Every kernel instantiation in metal/*.metal runs at least once on random inputs (odd
sizes included); broken copies of the kernels show that the emulation catches a
missing barrier, a wrong index, divergent SIMD operations and out-of-bounds writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from emulator import (
    ASCENDING,
    DESCENDING,
    DTYPE_CODES,
    METAL_DIR,
    SHUFFLED,
    EmulationError,
    Library,
    build,
    clang,
    plan,
    poisoned,
)

pytestmark = pytest.mark.skipif(
    clang() is None,
    reason="clang++ is not installed (apt-get install -y clang); the Metal emulation needs it",
)

BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
DTYPES = ["float32", "float16", "bfloat16"]
# (activation/output type, scale type) pairs the qmatmul kernels are built for.
PAIRS = [
    ("float32", "float32"),
    ("float16", "float16"),
    ("bfloat16", "bfloat16"),
    ("float32", "float16"),
    ("float32", "bfloat16"),
]
MX = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
RTOL = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}
SOURCES = sorted(METAL_DIR.glob("*.metal"))


def expected_kernel_names() -> set[str]:
    names = {f"jang_dequantize_{t}_b{b}" for t in DTYPES for b in BITS}
    for (x, s), b in itertools.product(PAIRS, BITS):
        names |= {f"jang_qmv_{x}_{s}_b{b}_m{mt}" for mt in (1, 8, 16)}
        names.add(f"jang_qmm_{x}_{s}_b{b}")
    for t, g, u in itertools.product(DTYPES, BITS, BITS):
        names.add(f"jang_moe_gate_up_{t}_g{g}_u{u}")
    return names


@pytest.fixture(scope="session")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Library]:
    """Every shader source compiled once per session, by file stem."""
    built = build(SOURCES, tmp_path_factory.mktemp("metal_emu"))
    return {Path(k).stem: v for k, v in built.items()}


@pytest.fixture(scope="session")
def lib_of(libs: dict[str, Library]) -> dict[str, Library]:
    """Kernel host name -> the library holding it."""
    return {name: lib for lib in libs.values() for name in lib.kernel_names()}


# ----------------------------------------------------------------- helpers -----


def raw(a: mx.array) -> np.ndarray:
    """The array's bytes as numpy (bfloat16 as its uint16 bit patterns)."""
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16))
    return np.array(a)


def np_dtype(name: str) -> type:
    return {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[name]


def from_raw(a: np.ndarray, name: str) -> mx.array:
    out = mx.array(a)
    return out.view(mx.bfloat16) if name == "bfloat16" else out


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)


def i32(v: int) -> np.ndarray:
    return np.array([v], np.int32)


def quantized(shape: tuple[int, ...], bits: int, gs: int, dtype: str, scale: float = 1.0):
    w = (mx.random.normal(shape) * scale).astype(MX[dtype])
    return mx.quantize(w, group_size=gs, bits=bits)


def assert_close(out: np.ndarray, ref: np.ndarray, mag: np.ndarray, rtol: float) -> None:
    """|out - ref| <= rtol * (|ref| + 1e-3 mag) + 2e-6 mag, mag = |x| @ |w|.T."""
    assert out.shape == ref.shape
    assert np.all(np.isfinite(out)), "non-finite output (unwritten or poisoned element)"
    err = np.abs(out - ref)
    bound = rtol * (np.abs(ref) + 1e-3 * mag) + 2e-6 * mag
    worst = float(np.max(err - bound))
    assert worst <= 0, f"max excess error {worst}, max error {err.max()}"


def dequant64(q: mx.array, s: mx.array, b: mx.array, bits: int, gs: int) -> np.ndarray:
    codes = mx.dequantize(
        q,
        mx.ones(s.shape, mx.float32),
        mx.zeros(b.shape, mx.float32),
        group_size=gs,
        bits=bits,
    )
    c = f64(codes).reshape(*s.shape, gs)
    return (c * f64(s)[..., None] + f64(b)[..., None]).reshape(*s.shape[:-1], -1)


# -------------------------------------------------------------- dequantize -----


def run_dequantize(lib: Library, q, s, b, bits: int, gs: int, dtype: str, **kw) -> np.ndarray:
    rows, k = s.shape[0], s.shape[1] * gs
    codes_per_pack = {2: 16, 3: 32, 4: 8, 5: 32, 6: 16, 8: 4}[bits]
    ppr = k // codes_per_pack
    d = plan(lib, "dequantize", bits, DTYPE_CODES[dtype], rows, ppr)
    out = poisoned((rows, k), np_dtype(dtype))
    bufs = [raw(q), raw(s), raw(b), out, i32(ppr), i32(gs)]
    lib.run(buffers=bufs, **d.launch_args(), **kw)
    return out


@pytest.mark.parametrize(("bits", "dtype"), list(itertools.product(BITS, DTYPES)))
def test_dequantize_bit_exact(libs, bits, dtype):
    for gs, (rows, k), scale in [(32, (7, 320), 1.0), (64, (3, 1088), 40.0), (128, (2, 384), 1e-3)]:
        q, s, b = quantized((rows, k), bits, gs, dtype, scale)
        out = run_dequantize(libs["dequantize"], q, s, b, bits, gs, dtype)
        expect = raw(mx.dequantize(q, s, b, group_size=gs, bits=bits))
        np.testing.assert_array_equal(out.view(np.uint8), expect.view(np.uint8))


# ----------------------------------------------------------------- qmatmul -----


def run_qmatmul(lib: Library, x, q, s, b, bits: int, gs: int, xt: str, st: str, **kw):
    m, k = x.shape
    n = q.shape[0]
    d = plan(lib, "qmatmul", bits, DTYPE_CODES[xt], DTYPE_CODES[st], m, n)
    out = poisoned((m, n), np_dtype(xt))
    bufs = [raw(x), raw(q), raw(s), raw(b), out, i32(m), i32(n), i32(k), i32(gs)]
    lib.run(buffers=bufs, **d.launch_args(), **kw)
    return d.kernel.decode(), f64(from_raw(out, xt))


def qmatmul_case(bits: int, gs: int, xt: str, st: str, m: int, n: int, k: int):
    q, s, b = quantized((n, k), bits, gs, st)
    x = mx.random.normal((m, k)).astype(MX[xt])
    w = dequant64(q, s, b, bits, gs)
    ref = f64(x) @ w.T
    mag = np.abs(f64(x)) @ np.abs(w).T
    return (x, q, s, b), ref, mag


@pytest.mark.parametrize(("bits", "gs", "pair"), list(itertools.product(BITS, GROUPS, PAIRS)))
def test_qmatmul_decode(libs, bits, gs, pair):
    xt, st = pair
    k = 384 if gs == 128 else 320
    (x, q, s, b), ref, mag = qmatmul_case(bits, gs, xt, st, 1, 13, k)
    name, out = run_qmatmul(libs["qmatmul"], x, q, s, b, bits, gs, xt, st)
    assert name == f"jang_qmv_{xt}_{st}_b{bits}_m1"
    assert_close(out, ref, mag, RTOL[xt])


@pytest.mark.parametrize(("bits", "pair"), list(itertools.product(BITS, PAIRS)))
@pytest.mark.parametrize(("m", "path"), [(3, "m8"), (11, "m16"), (37, "qmm")])
def test_qmatmul_small_and_large_m(libs, bits, pair, m, path):
    xt, st = pair
    gs = GROUPS[(bits + m) % 3]
    k = 384 if gs == 128 else 256
    (x, q, s, b), ref, mag = qmatmul_case(bits, gs, xt, st, m, 45, k)
    name, out = run_qmatmul(libs["qmatmul"], x, q, s, b, bits, gs, xt, st)
    assert name.endswith(path) if path != "qmm" else name.startswith("jang_qmm_")
    assert_close(out, ref, mag, RTOL[xt])


@pytest.mark.parametrize("order", [DESCENDING, SHUFFLED])
def test_qmatmul_independent_of_thread_order(libs, order):
    # The result of a correct kernel does not depend on how threads interleave.
    for m in (1, 5, 40):
        (x, q, s, b), _, _ = qmatmul_case(5, 64, "float32", "float32", m, 33, 192)
        _, first = run_qmatmul(libs["qmatmul"], x, q, s, b, 5, 64, "float32", "float32")
        _, other = run_qmatmul(
            libs["qmatmul"], x, q, s, b, 5, 64, "float32", "float32", order=order, seed=m
        )
        np.testing.assert_array_equal(first, other)


def test_qmatmul_matches_cpu_kernel(libs):
    # Same inputs through jang's CPU primitive and the emulated Metal kernels.
    import jang

    for m in (1, 9, 33):
        (x, q, s, b), _, _ = qmatmul_case(3, 32, "float16", "float16", m, 40, 256)
        _, out = run_qmatmul(libs["qmatmul"], x, q, s, b, 3, 32, "float16", "float16")
        cpu = f64(jang.qmatmul(x, q, s, b, 3, 32))
        np.testing.assert_allclose(out, cpu, rtol=2e-3, atol=2e-3 * np.abs(cpu).max())


# ----------------------------------------------------------- every kernel -----


def test_every_instantiation_is_known(lib_of):
    # No kernel in metal/ escapes the tests below, and none is missing.
    assert set(lib_of) == expected_kernel_names()


def qmatmul_instantiations() -> Iterator[tuple[str, int, str, str, int]]:
    for (xt, st), bits in itertools.product(PAIRS, BITS):
        for mt, m in (("m1", 1), ("m8", 8), ("m16", 16)):
            yield f"jang_qmv_{xt}_{st}_b{bits}_{mt}", bits, xt, st, m
        yield f"jang_qmm_{xt}_{st}_b{bits}", bits, xt, st, 17


@pytest.mark.parametrize(
    ("name", "bits", "xt", "st", "m"), list(qmatmul_instantiations()), ids=lambda v: str(v)
)
def test_every_qmatmul_instantiation(libs, name, bits, xt, st, m):
    # Each instantiation at the edge of its M range, odd n, group size by width.
    gs = GROUPS[bits % 3]
    k = 128 if gs < 128 else 256
    (x, q, s, b), ref, mag = qmatmul_case(bits, gs, xt, st, m, 7, k)
    used, out = run_qmatmul(libs["qmatmul"], x, q, s, b, bits, gs, xt, st)
    assert used == name
    assert_close(out, ref, mag, RTOL[xt])


# --------------------------------------------- the emulation can fail -----


def broken_copy(tmp_path: Path, source: str, old: str, new: str, libs_dir: str) -> Library:
    """A copy of metal/<source> with `old` replaced by `new`, built on its own."""
    text = (METAL_DIR / source).read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {source}"
    path = tmp_path / source
    path.write_text(text.replace(old, new))
    return next(iter(build([path], tmp_path / libs_dir).values()))


def test_missing_barrier_is_caught(tmp_path, libs):
    (x, q, s, b), ref, mag = qmatmul_case(4, 32, "float32", "float32", 40, 33, 128)
    _, good = run_qmatmul(libs["qmatmul"], x, q, s, b, 4, 32, "float32", "float32")
    assert_close(good, ref, mag, RTOL["float32"])
    barrier = "    threadgroup_barrier(mem_flags::mem_threadgroup);\n  }\n"
    for old, new in [
        # the barrier between staging a tile and reading it
        (
            "    threadgroup_barrier(mem_flags::mem_threadgroup);\n    for (int kk",
            "    for (int kk",
        ),
        # the barrier before the next step overwrites the tiles
        (barrier, "  }\n"),
    ]:
        lib = broken_copy(tmp_path, "qmatmul.metal", old, new, f"b{len(old)}")
        for order in (ASCENDING, DESCENDING):
            _, out = run_qmatmul(lib, x, q, s, b, 4, 32, "float32", "float32", order=order)
            with pytest.raises(AssertionError):
                assert_close(out, ref, mag, RTOL["float32"])


def test_wrong_index_is_caught(tmp_path):
    lib = broken_copy(
        tmp_path,
        "qmatmul.metal",
        "const int g = p / packs_per_group;",
        "const int g = p / (packs_per_group + 1);",
        "idx",
    )
    (x, q, s, b), ref, mag = qmatmul_case(4, 32, "float32", "float32", 1, 9, 256)
    _, out = run_qmatmul(lib, x, q, s, b, 4, 32, "float32", "float32")
    with pytest.raises(AssertionError):
        assert_close(out, ref, mag, RTOL["float32"])


def test_divergent_simd_sum_is_caught(tmp_path):
    lib = broken_copy(
        tmp_path,
        "qmatmul.metal",
        "if (m < mn) { // uniform across the SIMD group",
        "if (m < mn && lane < 16) {",
        "div",
    )
    (x, q, s, b), _, _ = qmatmul_case(4, 32, "float32", "float32", 1, 9, 256)
    with pytest.raises(EmulationError, match="deadlock"):
        run_qmatmul(lib, x, q, s, b, 4, 32, "float32", "float32")


def test_out_of_bounds_write_is_caught(tmp_path):
    lib = broken_copy(
        tmp_path,
        "dequantize.metal",
        "if (pack >= packs_per_row) {",
        "if (pack > packs_per_row) {",
        "oob",
    )
    q, s, b = quantized((3, 320), 4, 32, "float32")  # 40 packs a row, 64 threads
    with pytest.raises(EmulationError, match="out-of-bounds write"):
        run_dequantize(lib, q, s, b, 4, 32, "float32")


def test_unwritten_output_is_caught(tmp_path):
    lib = broken_copy(
        tmp_path,
        "dequantize.metal",
        "if (pack >= packs_per_row) {",
        "if (pack + 1 >= packs_per_row) {",
        "unwritten",
    )
    q, s, b = quantized((2, 128), 8, 32, "float32")
    out = run_dequantize(lib, q, s, b, 8, 32, "float32")
    assert np.isnan(out[:, -4:]).all()  # the last pack of each row: still poison


# ------------------------------------------------------------- moe_gate_up -----


def run_moe(lib: Library, x, ids, gate, up, gbits, ggs, ubits, ugs, dtype: str, experts: int):
    tokens, k = x.shape
    top_k = ids.shape[1]
    hidden = gate[0].shape[1]
    d = plan(lib, "moe_gate_up", gbits, ubits, DTYPE_CODES[dtype], tokens * top_k, hidden)
    out = poisoned((tokens * top_k, hidden), np_dtype(dtype))
    bufs = [raw(x), np.array(ids, np.uint32).reshape(-1)]
    bufs += [raw(a) for a in gate] + [raw(a) for a in up] + [out]
    bufs += [i32(top_k), i32(experts), i32(hidden), i32(k), i32(ggs), i32(ugs)]
    lib.run(buffers=bufs, **d.launch_args())
    return d.kernel.decode(), f64(from_raw(out, dtype)).reshape(tokens, top_k, hidden)


def moe_case(gbits, ggs, ubits, ugs, dtype, tokens=3, top_k=2, experts=4, hidden=9, k=256):
    gate = quantized((experts, hidden, k), gbits, ggs, dtype)
    up = quantized((experts, hidden, k), ubits, ugs, dtype)
    x = mx.random.normal((tokens, k)).astype(MX[dtype])
    ids = np.random.randint(0, experts, (tokens, top_k))
    gw, uw = dequant64(*gate, gbits, ggs), dequant64(*up, ubits, ugs)
    x64 = f64(x)
    g = np.einsum("tk,tjhk->tjh", x64, gw[ids])
    u = np.einsum("tk,tjhk->tjh", x64, uw[ids])
    return x, ids, gate, up, g / (1 + np.exp(-g)) * u


def assert_moe_close(out: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    assert np.all(np.isfinite(out))
    tol = max(RTOL[dtype], 1e-5)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize(("dtype", "gbits", "ubits"), list(itertools.product(DTYPES, BITS, BITS)))
def test_every_moe_gate_up_instantiation(libs, dtype, gbits, ubits):
    ggs, ugs = GROUPS[gbits % 3], GROUPS[(ubits + 1) % 3]
    x, ids, gate, up, ref = moe_case(gbits, ggs, ubits, ugs, dtype)
    name, out = run_moe(libs["moe"], x, ids, gate, up, gbits, ggs, ubits, ugs, dtype, 4)
    assert name == f"jang_moe_gate_up_{dtype}_g{gbits}_u{ubits}"
    assert_moe_close(out, ref, dtype)


def test_moe_gate_up_out_of_range_expert_and_cpu(libs):
    import jang

    x, ids, gate, up, ref = moe_case(4, 64, 3, 32, "float32", tokens=5, top_k=3, hidden=11)
    _, out = run_moe(libs["moe"], x, ids, gate, up, 4, 64, 3, 32, "float32", 4)
    cpu = jang.moe_gate_up(
        x, *gate, *up, mx.array(ids.astype(np.int32)),
        gate_bits=4, gate_group_size=64, up_bits=3, up_group_size=32,
    )  # fmt: skip
    np.testing.assert_allclose(out, f64(cpu), rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    ids[1, 2] = 7  # no such expert
    _, out = run_moe(libs["moe"], x, ids, gate, up, 4, 64, 3, 32, "float32", 4)
    assert np.all(out[1, 2] == 0)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-5 * np.abs(ref).max())

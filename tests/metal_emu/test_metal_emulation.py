"""jang's Metal kernels, executed on Linux by the Metal emulation (metal_emu.h) and
compared with the CPU reference, over the grids the host code (csrc/metal/plan.h) uses.

Every kernel instantiation in csrc/metal/*.metal runs at least once on random inputs (odd
sizes included), the MoE and gather kernels on both their gathered (decode) and sorted
(prefill: jang_moe_route, then tiles) paths, with out-of-range indices; broken copies of
the kernels show that the emulation catches each missing barrier of the tiled kernels,
a wrong index, divergent SIMD operations (simd_sum, prefix sums, simdgroup matrices) and
out-of-bounds writes.
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
    HERE,
    METAL_DIR,
    SHUFFLED,
    EmulationError,
    Library,
    build,
    clang,
    plan,
    poisoned,
    use_sorted,
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
        names.add(f"jang_moe_gate_up_sorted_{t}_g{g}_u{u}")
    names.add("jang_moe_route")
    names |= {name for name, *_ in gather_instantiations()}
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
    if path == "qmm":  # simdgroup matrices: short K keeps the emulation quick
        k = 128
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
    # No kernel in csrc/metal/ escapes the tests below, and none is missing.
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
    """A copy of csrc/metal/<source> with `old` replaced by `new`, built on its own."""
    text = (METAL_DIR / source).read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {source}"
    path = tmp_path / source
    path.write_text(text.replace(old, new))
    return next(iter(build([path], tmp_path / libs_dir).values()))


def barrier_removals(product: str) -> list[tuple[str, str]]:
    """(old, new) edits that each drop one barrier of a tiled kernel whose K loop
    computes with `product` (TileMma::multiply on the staged tiles)."""
    b = "threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    return [
        # between staging a K step's tiles and multiplying them
        (f"    {b}    {product}", f"    {product}"),
        # before the next K step overwrites the tiles
        (f"    {b}  }}\n", "  }\n"),
        # between storing the product in threadgroup memory and writing it out
        (f"  {b}  if (", "  if ("),
    ]


def test_missing_barrier_is_caught(tmp_path, libs):
    (x, q, s, b), ref, mag = qmatmul_case(4, 32, "float32", "float32", 40, 33, 128)
    _, good = run_qmatmul(libs["qmatmul"], x, q, s, b, 4, 32, "float32", "float32")
    assert_close(good, ref, mag, RTOL["float32"])
    for i, (old, new) in enumerate(barrier_removals("mma.multiply(")):
        lib = broken_copy(tmp_path, "qmatmul.metal", old, new, f"b{i}")
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


def test_simdgroup_matrix_emulation(tmp_path):
    # The emulated simdgroup matrices against numpy, and the misuses it reports.
    lib = next(iter(build([HERE / "simdgroup_matrix_selftest.metal"], tmp_path).values()))
    a = np.random.randn(8, 11).astype(np.float32)
    b = np.random.randn(8, 8).astype(np.float32)
    out = poisoned((136,), np.float32)
    launch = {"groups": [1], "threads": [32], "threadgroup_bytes": [256]}
    lib.run("emu_simdgroup_matrix", [a, b, out], **launch)
    want = a[:, :8].astype(np.float64) @ b.T.astype(np.float64) + 0.25
    rows = out[:72].reshape(8, 9)
    np.testing.assert_allclose(rows[:, :8], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(rows[:, 8]).all()  # the stride's gap is left alone
    np.testing.assert_allclose(out[72:].reshape(8, 8), want.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(EmulationError, match="deadlock"):
        lib.run("emu_simdgroup_matrix_divergent", [a, b, poisoned((136,), np.float32)], **launch)
    with pytest.raises(EmulationError, match="other arguments to simdgroup_load"):
        lib.run("emu_simdgroup_matrix_lane_args", [a, b, poisoned((136,), np.float32)], **launch)


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


def run_route(libs: dict[str, Library], ids: np.ndarray, experts: int, **kw):
    """jang_moe_route over the flat uint32 `ids`: (offsets, perm)."""
    n = ids.size
    d = plan(libs["moe"], "moe_route", experts)
    offsets = poisoned((experts + 2,), np.uint32)
    perm = poisoned((n,), np.uint32)
    bufs = [np.array(ids, np.uint32).reshape(-1), offsets, perm, i32(n), i32(experts)]
    libs["moe"].run(buffers=bufs, **d.launch_args(), **kw)
    return offsets, perm


def run_moe(libs, x, ids, gate, up, gbits, ggs, ubits, ugs, dtype: str, experts: int, **kw):
    """moe_gate_up as eval_gpu runs it: the plan's kernel, routed first when sorted."""
    tokens, k = x.shape
    top_k = ids.shape[1]
    hidden = gate[0].shape[1]
    slots = tokens * top_k
    d = plan(libs["moe"], "moe_gate_up", gbits, ubits, DTYPE_CODES[dtype], slots, hidden, experts)
    name = d.kernel.decode()
    ids = np.array(ids, np.uint32).reshape(-1)
    sorted_path = "_sorted_" in name
    assert sorted_path == use_sorted(libs["moe"], slots, experts)
    if sorted_path:
        offsets, perm = run_route(libs, ids, experts, **kw)
    out = poisoned((slots, hidden), np_dtype(dtype))
    bufs = [raw(x), perm if sorted_path else ids]
    bufs += [raw(a) for a in gate] + [raw(a) for a in up] + [out]
    bufs += [i32(top_k), i32(experts), i32(hidden), i32(k), i32(ggs), i32(ugs)]
    if sorted_path:
        bufs.append(offsets)
    libs["moe"].run(buffers=bufs, **d.launch_args(), **kw)
    return name, f64(from_raw(out, dtype)).reshape(tokens, top_k, hidden)


def moe_case(
    gbits, ggs, ubits, ugs, dtype, tokens=3, top_k=2, experts=4, hidden=9, k=256, ids=None
):
    """Random x, gate, up and expert ids (or `ids`, which may be out of range) and the
    float64 reference (zeros for out-of-range ids)."""
    gate = quantized((experts, hidden, k), gbits, ggs, dtype)
    up = quantized((experts, hidden, k), ubits, ugs, dtype)
    x = mx.random.normal((tokens, k)).astype(MX[dtype])
    if ids is None:
        ids = np.random.randint(0, experts, (tokens, top_k))
    valid = ids < experts
    idc = np.where(valid, ids, 0)
    gw, uw = dequant64(*gate, gbits, ggs), dequant64(*up, ubits, ugs)
    x64 = f64(x)
    g = np.einsum("tk,tjhk->tjh", x64, gw[idc])
    u = np.einsum("tk,tjhk->tjh", x64, uw[idc])
    ref = g / (1 + np.exp(-g)) * u * valid[..., None]
    return x, ids, gate, up, ref


def assert_moe_close(out: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    assert np.all(np.isfinite(out))
    tol = max(RTOL[dtype], 1e-5)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize(("dtype", "gbits", "ubits"), list(itertools.product(DTYPES, BITS, BITS)))
def test_every_moe_gate_up_instantiation(libs, dtype, gbits, ubits):
    ggs, ugs = GROUPS[gbits % 3], GROUPS[(ubits + 1) % 3]
    x, ids, gate, up, ref = moe_case(gbits, ggs, ubits, ugs, dtype)
    name, out = run_moe(libs, x, ids, gate, up, gbits, ggs, ubits, ugs, dtype, 4)
    assert name == f"jang_moe_gate_up_{dtype}_g{gbits}_u{ubits}"
    assert_moe_close(out, ref, dtype)


@pytest.mark.parametrize(("dtype", "gbits", "ubits"), list(itertools.product(DTYPES, BITS, BITS)))
def test_every_moe_gate_up_sorted_instantiation(libs, dtype, gbits, ubits):
    # 33 tokens x 2 slots (sorted-token prefill), in random order: 32 for expert 0 (one
    # row tile), 33 for expert 1 (two, the second with one row), one out of range; 20
    # hidden rows (a partial column tile). Kept small: simdgroup matrices are costly to
    # emulate (every lane hands over to the next at each of them).
    ggs, ugs = GROUPS[(gbits + 2) % 3], GROUPS[ubits % 3]
    ids = np.random.permutation(np.r_[np.zeros(32), np.ones(33), [2 + gbits]])
    ids = ids.astype(np.int64).reshape(33, 2)
    k = max(64, ggs, ugs)
    x, ids, gate, up, ref = moe_case(
        gbits, ggs, ubits, ugs, dtype, tokens=33, experts=2, hidden=20, k=k, ids=ids
    )
    name, out = run_moe(libs, x, ids, gate, up, gbits, ggs, ubits, ugs, dtype, 2)
    assert name == f"jang_moe_gate_up_sorted_{dtype}_g{gbits}_u{ubits}"
    assert np.all(out[ids >= 2] == 0)
    assert_moe_close(out, ref, dtype)


def test_moe_gate_up_out_of_range_expert_and_cpu(libs):
    import jang

    x, ids, gate, up, ref = moe_case(4, 64, 3, 32, "float32", tokens=5, top_k=3, hidden=11)
    _, out = run_moe(libs, x, ids, gate, up, 4, 64, 3, 32, "float32", 4)
    cpu = jang.moe_gate_up(
        x, *gate, *up, mx.array(ids.astype(np.int32)),
        gate_bits=4, gate_group_size=64, up_bits=3, up_group_size=32,
    )  # fmt: skip
    np.testing.assert_allclose(out, f64(cpu), rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    ids[1, 2] = 7  # no such expert
    _, out = run_moe(libs, x, ids, gate, up, 4, 64, 3, 32, "float32", 4)
    assert np.all(out[1, 2] == 0)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize(
    ("tokens", "top_k", "experts", "skew", "hidden", "k"),
    [
        (40, 2, 4, False, 45, 128),  # two column tiles, the second partial
        (33, 4, 64, True, 20, 128),
        (64, 1, 64, False, 20, 128),  # one row per expert on average: still sorted
        (100, 2, 3, True, 20, 128),
    ],
)
def test_moe_gate_up_sorted_matches_cpu(libs, tokens, top_k, experts, skew, hidden, k):
    # Sorted prefill against jang's CPU primitive, with out-of-range ids, empty
    # experts and (skew) one expert taking most slots, so that it spans several
    # row tiles while most buckets are empty.
    import jang

    ids = np.random.randint(0, experts, (tokens, top_k))
    if skew:
        ids[np.random.rand(tokens, top_k) < 0.8] = experts // 2
    ids.reshape(-1)[::17] = experts + 3
    x, ids, gate, up, ref = moe_case(
        5, 32, 6, 128, "float16", tokens, top_k, experts, hidden=hidden, k=k, ids=ids
    )
    name, out = run_moe(libs, x, ids, gate, up, 5, 32, 6, 128, "float16", experts)
    assert "_sorted_" in name
    cpu = f64(
        jang.moe_gate_up(
            x, *gate, *up, mx.array(ids.astype(np.int32)),
            gate_bits=5, gate_group_size=32, up_bits=6, up_group_size=128, stream=mx.cpu,
        )
    )  # fmt: skip
    assert_moe_close(out, ref, "float16")
    np.testing.assert_allclose(out, cpu, rtol=4e-3, atol=4e-3 * np.abs(cpu).max())
    assert np.all(out.reshape(-1, hidden)[::17] == 0)


@pytest.mark.parametrize("order", [DESCENDING, SHUFFLED])
def test_moe_gate_up_sorted_independent_of_thread_order(libs, order):
    x, ids, gate, up, _ = moe_case(
        3, 64, 4, 32, "float32", tokens=36, top_k=2, experts=2, hidden=20, k=64
    )
    args = (libs, x, ids, gate, up, 3, 64, 4, 32, "float32", 2)
    _, first = run_moe(*args)
    _, other = run_moe(*args, order=order, seed=7)
    np.testing.assert_array_equal(first, other)


# ------------------------------------------------------------ routing -----


def route_reference(ids: np.ndarray, experts: int):
    bucket = np.minimum(ids.reshape(-1), experts)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=experts + 1))])
    return offsets, np.argsort(bucket, kind="stable")


@pytest.mark.parametrize(
    ("n", "experts"), [(1, 1), (31, 2), (64, 4), (100, 3), (333, 64), (70, 257)]
)
@pytest.mark.parametrize("order", [ASCENDING, SHUFFLED])
def test_moe_route(libs, n, experts, order):
    ids = np.random.randint(0, experts + 2, n).astype(np.uint32)  # some out of range
    ids[n // 2] = 0xFFFFFFFF
    offsets, perm = run_route(libs, ids, experts, order=order, seed=n)
    want_offsets, want_perm = route_reference(ids, experts)
    np.testing.assert_array_equal(offsets, want_offsets)
    np.testing.assert_array_equal(perm, want_perm)


def test_sorted_tiles_cover_every_row():
    # params.h's layout: bucket b owns tiles from offset[b] * m // BM + b on; that
    # range always holds the bucket's ceil(rows / BM) tiles, and the last range ends
    # at the grid's size entries * m // BM + E + 1.
    bm = 32
    rng = np.random.default_rng(0)
    for _ in range(500):
        experts, m = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        counts = rng.integers(0, 3 * bm, experts + 1) * (rng.random(experts + 1) < 0.7)
        off = np.concatenate([[0], np.cumsum(counts)])
        start = off * m // bm + np.arange(experts + 2)
        assert np.all(np.diff(start) >= -(-counts * m // bm))
        assert start[-1] == off[-1] * m // bm + experts + 1


# ---------------------------------------------------------- gather_qmm -----


def run_gather(libs, x, q, s, b, lhs, rhs, bits, gs, xt, st, **kw):
    """gather_qmm as eval_gpu runs it on x (bx, m, k), w (experts, n, .) and flat
    uint32 lhs / rhs: the plan's kernel, routed by rhs first when sorted."""
    bx, m, k = x.shape
    experts, n = q.shape[:2]
    entries = lhs.size
    d = plan(libs["gather_qmm"], "gather_qmm", bits, DTYPE_CODES[xt], DTYPE_CODES[st], entries, m, n, experts)  # fmt: skip
    name = d.kernel.decode()
    sorted_path = name.startswith("jang_gather_qmm_")
    assert sorted_path == use_sorted(libs["gather_qmm"], entries * m, experts)
    lhs = np.array(lhs, np.uint32).reshape(-1)
    rhs = np.array(rhs, np.uint32).reshape(-1)
    if sorted_path:
        offsets, perm = run_route(libs, rhs, experts, **kw)
    out = poisoned((entries, m, n), np_dtype(xt))
    bufs = [raw(x), raw(q), raw(s), raw(b), out, i32(m), i32(n), i32(k), i32(gs)]
    bufs += [lhs, perm if sorted_path else rhs, i32(bx), i32(experts)]
    if sorted_path:
        bufs.append(offsets)
    libs["gather_qmm"].run(buffers=bufs, **d.launch_args(), **kw)
    return name, f64(from_raw(out, xt))


def gather_case(bits, gs, xt, st, entries, m, n, k, bx, experts, bad_lhs=(), bad_rhs=()):
    q, s, b = quantized((experts, n, k), bits, gs, st)
    x = mx.random.normal((bx, m, k)).astype(MX[xt])
    lhs = np.random.randint(0, bx, entries).astype(np.uint32)
    rhs = np.random.randint(0, experts, entries).astype(np.uint32)
    lhs[list(bad_lhs)] = bx + 1
    rhs[list(bad_rhs)] = experts
    w = dequant64(q, s, b, bits, gs)  # (experts, n, k)
    valid = (lhs < bx) & (rhs < experts)
    x64 = f64(x)[np.where(valid, lhs, 0)]  # (entries, m, k)
    wg = w[np.where(valid, rhs, 0)]  # (entries, n, k)
    ref = np.einsum("emk,enk->emn", x64, wg) * valid[:, None, None]
    mag = np.einsum("emk,enk->emn", np.abs(x64), np.abs(wg))
    return (x, q, s, b, lhs, rhs), ref, mag


def gather_instantiations() -> Iterator[tuple[str, int, str, str]]:
    for (xt, st), bits in itertools.product(PAIRS, BITS):
        yield f"jang_gather_qmv_{xt}_{st}_b{bits}", bits, xt, st
        yield f"jang_gather_qmm_{xt}_{st}_b{bits}", bits, xt, st


@pytest.mark.parametrize(
    ("name", "bits", "xt", "st"), list(gather_instantiations()), ids=lambda v: str(v)
)
def test_every_gather_qmm_instantiation(libs, name, bits, xt, st):
    # Decode: 7 entries of one row each (the MoE down projection); sorted: 35 entries
    # of 2 rows over 3 experts. Odd n (a partial column tile), out-of-range lhs and
    # rhs indices.
    gs = GROUPS[(bits + 1) % 3]
    k = 128 if gs < 128 else 256
    entries, m = (7, 1) if "_qmv_" in name else (35, 2)
    args, ref, mag = gather_case(
        bits, gs, xt, st, entries, m, 29, k, bx=9, experts=3, bad_lhs=[1], bad_rhs=[4]
    )
    used, out = run_gather(libs, *args, bits, gs, xt, st)
    assert used == name
    assert np.all(out[[1, 4]] == 0)
    assert_close(out, ref, mag, RTOL[xt])


@pytest.mark.parametrize(
    ("entries", "m", "experts"), [(3, 5, 2), (12, 3, 4), (200, 1, 8), (9, 8, 2)]
)
def test_gather_qmm_matches_cpu(libs, entries, m, experts):
    # Both paths (decode with several rows per entry, and sorted) against jang's CPU
    # primitive, and x batch entries used by several rows.
    import jang

    args, ref, mag = gather_case(
        6, 64, "float32", "bfloat16", entries, m, 29, 192, bx=4, experts=experts,
        bad_lhs=[0], bad_rhs=[entries - 1],
    )  # fmt: skip
    x, q, s, b, lhs, rhs = args
    _, out = run_gather(libs, *args, 6, 64, "float32", "bfloat16")
    cpu = jang.gather_qmm(
        x, q, s, b, lhs_indices=mx.array(lhs), rhs_indices=mx.array(rhs),
        bits=6, group_size=64, stream=mx.cpu,
    )  # fmt: skip
    cpu = f64(cpu).reshape(entries, m, -1)
    assert_close(out, ref, mag, RTOL["float32"])
    np.testing.assert_allclose(out, cpu, rtol=1e-5, atol=1e-5 * np.abs(cpu).max())


@pytest.mark.parametrize("order", [DESCENDING, SHUFFLED])
def test_gather_qmm_sorted_independent_of_thread_order(libs, order):
    args, _, _ = gather_case(2, 32, "float16", "float16", 70, 1, 40, 64, bx=70, experts=3)
    _, first = run_gather(libs, *args, 2, 32, "float16", "float16")
    _, other = run_gather(libs, *args, 2, 32, "float16", "float16", order=order, seed=3)
    np.testing.assert_array_equal(first, other)


def test_sorted_path_choice(libs):
    # Same rule for both ops (csrc/metal/plan.h): at least 64 rows and one per expert.
    lib = libs["moe"]
    assert not use_sorted(lib, 63, 8)
    assert use_sorted(lib, 64, 8)
    assert use_sorted(lib, 128, 128)
    assert not use_sorted(lib, 127, 128)
    d = plan(lib, "moe_gate_up", 4, 4, 1, 4096, 768, 128)
    assert d.kernel.decode() == "jang_moe_gate_up_sorted_float16_g4_u4"
    assert list(d.groups) == [24, 4096 // 32 + 129, 1]
    assert sum(d.threadgroup_bytes) <= 32768
    d = plan(libs["gather_qmm"], "gather_qmm", 4, 1, 1, 8, 1, 2048, 128)
    assert d.kernel.decode() == "jang_gather_qmv_float16_float16_b4"


# --------------------------------- the emulation catches broken MoE kernels -----


def test_missing_barrier_in_sorted_moe_is_caught(tmp_path, libs):
    x, ids, gate, up, ref = moe_case(4, 32, 2, 64, "float32", tokens=40, experts=2, hidden=20, k=64)
    _, good = run_moe(libs, x, ids, gate, up, 4, 32, 2, 64, "float32", 2)
    assert_moe_close(good, ref, "float32")
    for i, (old, new) in enumerate(barrier_removals("gate.multiply(")):
        broken = dict(libs, moe=broken_copy(tmp_path, "moe.metal", old, new, f"moe{i}"))
        for order in (ASCENDING, DESCENDING):
            name, out = run_moe(broken, x, ids, gate, up, 4, 32, 2, 64, "float32", 2, order=order)
            assert "_sorted_" in name
            with pytest.raises(AssertionError):
                assert_moe_close(out, ref, "float32")


def test_missing_barrier_in_sorted_gather_is_caught(tmp_path, libs):
    args, ref, mag = gather_case(3, 32, "float32", "float32", 66, 1, 20, 64, bx=66, experts=2)
    _, good = run_gather(libs, *args, 3, 32, "float32", "float32")
    assert_close(good, ref, mag, RTOL["float32"])
    for i, (old, new) in enumerate(barrier_removals("mma.multiply(")):
        lib = broken_copy(tmp_path, "gather_qmm.metal", old, new, f"g{i}")
        broken = dict(libs, gather_qmm=lib)
        for order in (ASCENDING, DESCENDING):
            _, out = run_gather(broken, *args, 3, 32, "float32", "float32", order=order)
            with pytest.raises(AssertionError):
                assert_close(out, ref, mag, RTOL["float32"])


def test_wrong_route_index_is_caught(tmp_path, libs):
    # Lanes of a SIMD group writing over each other's slots.
    lib = broken_copy(
        tmp_path, "moe.metal", "perm[pos + before] =", "perm[pos + before / 2] =", "route_idx"
    )
    ids = np.random.randint(0, 3, 90).astype(np.uint32)
    offsets, perm = run_route(dict(libs, moe=lib), ids, 3)
    want_offsets, want_perm = route_reference(ids, 3)
    np.testing.assert_array_equal(offsets, want_offsets)
    assert np.any(perm != want_perm)


def test_divergent_prefix_sum_is_caught(tmp_path, libs):
    # Lanes past n leaving the loop early: their SIMD group's prefix sum never completes.
    lib = broken_copy(
        tmp_path,
        "moe.metal",
        "for (int i0 = 0; i0 < n && pos < end; i0 += kSimdWidth) { // uniform",
        "for (int i0 = 0; i0 + int(lane) < n && pos < end; i0 += kSimdWidth) {",
        "route_div",
    )
    with pytest.raises(EmulationError, match=r"deadlock|divergent"):
        run_route(dict(libs, moe=lib), np.zeros(40, np.uint32), 2)

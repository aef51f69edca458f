"""A small, memory-frugal reader for llama.cpp's GGUF files.

Layout (GGUF v2/v3, little-endian): magic ``b"GGUF"``, ``uint32`` version, ``uint64``
tensor count, ``uint64`` key/value count; the key/value pairs (key string, ``uint32``
value type, value); one info record per tensor (name string, ``uint32`` dimension count,
``uint64`` dimensions innermost first, ``uint32`` ggml type, ``uint64`` offset into the
data region); padding to ``general.alignment`` (default 32); the data region. Strings are
a ``uint64`` byte length followed by UTF-8 bytes; arrays are a ``uint32`` item type, a
``uint64`` count and the items.

The file is memory-mapped and the header parsed once, with every length and count checked
against the bytes that remain, so a truncated or corrupt file raises `GGUFError` naming the
file and the field (never an IndexError, a giant allocation or a long loop). Numeric arrays
are copied into numpy arrays; string arrays (a 262k-entry vocabulary) stay one bytes blob
plus an offset table and decode an entry when asked. Tensor data is handed out as numpy
views of the mapping, by rows, and `release` returns a range's pages to the system so a
conversion that streams over the file does not end up with all of it resident.

Type numbers, block sizes and dequantization come from the ``gguf`` package.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
)

from jang.errors import GGUFError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays deeper than this are refused

_SCALARS: dict[int, tuple[str, int]] = {
    GGUFValueType.UINT8: ("<B", 1),
    GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2),
    GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4),
    GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4),
    GGUFValueType.BOOL: ("<?", 1),
    GGUFValueType.UINT64: ("<Q", 8),
    GGUFValueType.INT64: ("<q", 8),
    GGUFValueType.FLOAT64: ("<d", 8),
}
_NUMPY = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


class StringArray:
    """A GGUF array of strings kept as its raw bytes plus where each string starts.

    ``len``, indexing (one string decoded per access), iteration and `tolist` behave
    like a list of str; a 262k-entry vocabulary costs a few MB instead of a Python
    object per entry.
    """

    def __init__(self, blob: bytes, starts: np.ndarray):
        self._blob = blob
        self._starts = starts  # n + 1 entries: string i is blob[starts[i] : starts[i+1] - 8]

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index: int) -> str:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"StringArray indices must be integers, not {type(index).__name__}")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"string index {index} out of range ({n} strings)")
        start, end = int(self._starts[i]), int(self._starts[i + 1]) - 8
        return self._blob[start:end].decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        blob, starts = self._blob, self._starts.tolist()
        for start, nxt in itertools.pairwise(starts):
            yield blob[start : nxt - 8].decode("utf-8", errors="replace")

    def tolist(self) -> list[str]:
        return list(self)

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings, {len(self._blob)} bytes)"


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's info record. `dims` are GGUF's (innermost first); `shape` is numpy's."""

    name: str
    dims: tuple[int, ...]
    type: GGMLQuantizationType
    offset: int  # absolute byte offset of the data in the file
    n_elements: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))

    @property
    def row_elements(self) -> int:
        return self.dims[0]

    @property
    def rows(self) -> int:
        """Rows of `row_elements` (all outer dimensions folded; 1 for a vector)."""
        return self.n_elements // self.dims[0] if self.dims[0] else 0

    @property
    def row_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        return self.dims[0] // block * size


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; errors name the file and field."""

    def __init__(self, buf, size: int, path: Path):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.path = path

    def fail(self, what: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}: {problem} (at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise GGUFError(
                f"{self.path}: truncated or corrupt: {what} needs {n} bytes at byte "
                f"{self.pos}, the file has {self.size - self.pos} left (size {self.size})"
            )

    def scalar(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", 8, what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        self.need(n, what)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def name(self, what: str) -> str:
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(what, f"not valid UTF-8 ({raw[:40]!r})") from None


class GGUFFile:
    """A parsed GGUF file: `version`, `metadata` (key -> value), `tensors` (name -> info),
    `alignment`, `data_offset`, and row-wise numpy views of the tensor data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise GGUFError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        try:
            self.size = self._file.seek(0, 2)
            if self.size < 4:
                raise GGUFError(f"{self.path}: not a GGUF file ({self.size} bytes)")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise
        # the header's pages were only needed for parsing
        self.release(0, self.data_offset)

    # ----------------------------------------------------------- header ----

    def _parse(self) -> None:
        cur = _Cursor(self._map, self.size, self.path)
        magic = bytes(self._map[:4])
        if magic != MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
        cur.pos = 4
        version = cur.u32("version")
        if version not in VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in VERSIONS:
                raise GGUFError(f"{self.path}: big-endian GGUF files are not supported")
            raise GGUFError(
                f"{self.path}: GGUF version {version} is not supported (reads versions "
                f"{', '.join(map(str, VERSIONS))})"
            )
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key/value count")
        # every key/value takes >= 13 bytes and every tensor info >= 32: refuse counts the
        # file cannot hold before looping over them
        if n_kv * 13 + n_tensors * 32 > self.size - cur.pos:
            raise cur.fail(
                "header",
                f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in a "
                f"{self.size}-byte file (truncated or corrupt)",
            )
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for i in range(n_kv):
            key = cur.name(f"metadata key #{i}")
            if key in self.metadata:
                raise cur.fail(f"metadata key {key!r}", "appears twice")
            vtype = cur.u32(f"metadata {key!r} value type")
            self.metadata[key] = self._value(cur, vtype, f"metadata {key!r}", 0)
            self.value_types[key] = vtype
        self.alignment = self._alignment()
        infos = []
        for i in range(n_tensors):
            infos.append(self._tensor_info(cur, i))
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, GGUFTensor] = {}
        for name, dims, ggml_type, rel in infos:
            self.tensors[name] = self._tensor(name, dims, ggml_type, rel)

    def _value(self, cur: _Cursor, vtype: int, what: str, depth: int) -> Any:
        if vtype in _SCALARS:
            fmt, n = _SCALARS[vtype]
            return cur.scalar(fmt, n, what)
        if vtype == GGUFValueType.STRING:
            return cur.raw_string(what).decode("utf-8", errors="replace")
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_NESTING:
                raise cur.fail(what, f"arrays nested more than {MAX_NESTING} deep")
            itype = cur.u32(f"{what} item type")
            count = cur.u64(f"{what} item count")
            return self._array(cur, itype, count, what, depth + 1)
        raise cur.fail(what, f"unknown value type {vtype}")

    def _array(self, cur: _Cursor, itype: int, count: int, what: str, depth: int) -> Any:
        left = cur.size - cur.pos
        if itype in _SCALARS:
            n = _SCALARS[itype][1]
            cur.need(count * n, f"{what} ({count} items)")
            out = np.frombuffer(self._map, _NUMPY[itype], count, cur.pos).copy()
            cur.pos += count * n
            return out.astype(bool) if itype == GGUFValueType.BOOL else out
        if itype == GGUFValueType.STRING:
            if count * 8 > left:
                raise cur.fail(what, f"{count} strings cannot fit in the {left} bytes left")
            return self._strings(cur, count, what)
        if itype == GGUFValueType.ARRAY:
            if count * 12 > left:
                raise cur.fail(what, f"{count} arrays cannot fit in the {left} bytes left")
            return [self._value(cur, itype, f"{what}[{k}]", depth) for k in range(count)]
        raise cur.fail(what, f"unknown array item type {itype}")

    def _strings(self, cur: _Cursor, count: int, what: str) -> StringArray:
        buf, size, first = self._map, cur.size, cur.pos
        starts = array("q")
        pos = first
        unpack = struct.Struct("<Q").unpack_from
        for k in range(count):
            if size - pos < 8:
                cur.pos = pos
                cur.need(8, f"{what}[{k}] length")
            (n,) = unpack(buf, pos)
            pos += 8
            starts.append(pos - first)
            if n > size - pos:
                cur.pos = pos
                cur.need(n, f"{what}[{k}]")
            pos += n
        starts.append(pos - first + 8)
        cur.pos = pos
        return StringArray(bytes(buf[first:pos]), np.frombuffer(starts, np.int64))

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return GGUF_DEFAULT_ALIGNMENT
        value = self.metadata["general.alignment"]
        if self.value_types["general.alignment"] != GGUFValueType.UINT32:
            raise GGUFError(f"{self.path}: general.alignment must be a uint32")
        if value <= 0 or value & (value - 1):
            raise GGUFError(f"{self.path}: general.alignment {value} is not a power of two")
        return value

    def _tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
        name = cur.name(f"tensor info #{i} name")
        what = f"tensor {name!r}"
        n_dims = cur.u32(f"{what} dimension count")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(what, f"{n_dims} dimensions (GGUF tensors have 1 to {MAX_DIMS})")
        dims = tuple(cur.u64(f"{what} dimension {d}") for d in range(n_dims))
        ggml_type = cur.u32(f"{what} type")
        offset = cur.u64(f"{what} data offset")
        return name, dims, ggml_type, offset

    def _tensor(self, name: str, dims, ggml_type: int, rel: int) -> GGUFTensor:
        where = f"{self.path}: tensor {name!r}"
        if name in self.tensors:
            raise GGUFError(f"{where} appears twice")
        try:
            kind = GGMLQuantizationType(ggml_type)
            block, type_size = GGML_QUANT_SIZES[kind]
        except (ValueError, KeyError):
            raise GGUFError(f"{where} has unknown ggml type {ggml_type}") from None
        if any(d >= 1 << 62 for d in dims):
            raise GGUFError(f"{where} has an impossible shape {list(dims)}")
        n = int(np.prod(dims, dtype=object))
        if dims[0] % block:
            raise GGUFError(
                f"{where}: row length {dims[0]} is not a multiple of the {kind.name} "
                f"block size {block}"
            )
        n_bytes = n // block * type_size
        if rel % self.alignment:
            raise GGUFError(
                f"{where}: data offset {rel} is not a multiple of the alignment {self.alignment}"
            )
        start = self.data_offset + rel
        if n_bytes > self.size - start:
            raise GGUFError(
                f"{where}: data (bytes {start}..{start + n_bytes}) runs past the end of the "
                f"file ({self.size} bytes): truncated?"
            )
        return GGUFTensor(name, tuple(dims), kind, start, n, n_bytes)

    # ------------------------------------------------------------- data ----

    def tensor(self, name: str) -> GGUFTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r}") from None

    def data(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's stored bytes as a read-only uint8 view of the mapping."""
        return np.frombuffer(self._map, np.uint8, t.n_bytes, t.offset)

    def rows(self, t: GGUFTensor, start: int, stop: int) -> np.ndarray:
        """Stored bytes of rows [start, stop) as a (rows, row_bytes) uint8 view."""
        rb = t.row_bytes
        count = (stop - start) * rb
        return np.frombuffer(self._map, np.uint8, count, t.offset + start * rb).reshape(-1, rb)

    def release(self, start: int, stop: int) -> None:
        """Let the kernel drop the mapping's pages in [start, stop) from this process (they
        are read again from the page cache if touched later)."""
        page = mmap.PAGESIZE
        lo = start // page * page
        if lo >= self.size:
            return
        hi = min(-(-stop // page) * page, -(-self.size // page) * page)
        if hi > lo and hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def release_tensor(self, t: GGUFTensor) -> None:
        self.release(t.offset, t.offset + t.n_bytes)

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            try:
                m.close()
            except BufferError:  # numpy views still alive; the mapping goes with them
                pass
        self._file.close()

"""Bundles on disk: write them atomically, read their manifest, validate them.

A bundle is a directory that stock ``mlx_lm.load`` opens:

* ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors`` + index): MLX
  affine tensors ``{module}.weight`` (uint32 codes), ``.scales``, ``.biases``
  and unquantized tensors. Every shard's data region starts on a page boundary
  (the header is padded with spaces, as the format allows) and every tensor is
  aligned to its element size with no gaps between tensors, so the files stay
  standard safetensors while a mapping of the whole shard can be handed out as
  zero-copy views (one no-copy buffer per shard on Metal).
* ``config.json``: the source config plus mlx-lm's ``quantization`` dict, with an
  explicit entry for every module (``false`` where left unquantized).
* ``jang.json``: format version, plan summary, and a manifest entry per stored
  tensor (bits, group size, shapes, dtype, shard, byte offset, sha256 of the
  source tensor). Readers trust the manifest and check it against the shards.
* tokenizer and generation files.

Everything is written into a temporary directory next to the output and renamed
at the end, so a failed or interrupted conversion leaves no partial bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from jang.config import encode_floats
from jang.data import sha256_file
from jang.errors import BundleError
from jang.formats import BITS, GROUP_SIZES

FORMAT = "jang"
FORMAT_VERSION = 1
MANIFEST = "jang.json"
CARD = "README.md"  # the model card (`jang.card`)
PAGE = 4096
HEADER_RESERVE = 64 * 1024
DEFAULT_SHARD_BYTES = 2 * 1024**3

# safetensors dtype tag <-> (numpy dtype for raw bytes, element size)
ST_DTYPES = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),
    "U32": (np.uint32, 4),
    "I32": (np.int32, 4),
    "U8": (np.uint8, 1),
    "I64": (np.int64, 8),
    "BOOL": (np.bool_, 1),
}


_MX_TO_ST = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "uint32": "U32",
    "int32": "I32",
    "uint8": "U8",
    "int64": "I64",
    "bool": "BOOL",
}


def _raw(array) -> tuple[str, np.ndarray]:
    """(safetensors dtype tag, contiguous numpy view of the raw bytes) of an MLX/numpy array."""
    import mlx.core as mx

    if isinstance(array, mx.array):
        name = str(array.dtype).removeprefix("mlx.core.")
        if name not in _MX_TO_ST:
            raise BundleError(f"cannot store dtype {name}")
        tag = _MX_TO_ST[name]
        if tag == "BF16":
            array = array.view(mx.uint16)
        return tag, np.ascontiguousarray(np.array(array, copy=False))
    arr = np.ascontiguousarray(array)
    name = str(arr.dtype)
    if name not in _MX_TO_ST:
        raise BundleError(f"cannot store dtype {name}")
    return _MX_TO_ST[name], arr


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def tensor_checksum(data) -> str:
    """The per-tensor checksum a manifest records (``xxh3`` in each array record): xxHash's
    XXH3-64 of the stored bytes, chosen by measurement (bench/checksum_speed.py, RESULTS.md:
    22.7 GB/s on this 2-core machine, 7x zlib's crc32 and 16x sha256), so that plain
    `validate` and `jang.load(verify=True)` re-hash a bundle in well under a second per GB.
    Not cryptographic: it catches corruption, not tampering (`validate --deep` re-hashes the
    shards with sha256)."""
    return xxhash.xxh3_64(data).hexdigest()


class ShardWriter:
    """One safetensors file written as tensors arrive, header filled in at close."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "w+b")
        self._f.seek(HEADER_RESERVE)
        self._pos = 0  # bytes of data written
        self.entries: dict[str, dict[str, Any]] = {}
        self.checksums: dict[str, str] = {}  # name -> tensor_checksum of its bytes
        self._deferred: list[tuple[str, str, np.ndarray]] = []

    @property
    def nbytes(self) -> int:
        return self._pos + sum(a.nbytes for _, _, a in self._deferred)

    def add(self, name: str, array) -> None:
        if name in self.entries or any(n == name for n, _, _ in self._deferred):
            raise BundleError(f"tensor {name} written twice")
        tag, raw = _raw(array)
        itemsize = ST_DTYPES[tag][1]
        if self._pos % itemsize or raw.nbytes % 4:
            self._deferred.append((name, tag, raw))  # would misalign what follows
        else:
            self._write(name, tag, raw)

    def _write(self, name: str, tag: str, raw: np.ndarray) -> None:
        data = memoryview(raw.reshape(-1)).cast("B")
        self._f.write(data)
        self.checksums[name] = tensor_checksum(data)
        self.entries[name] = {
            "dtype": tag,
            "shape": list(raw.shape),
            "data_offsets": [self._pos, self._pos + raw.nbytes],
        }
        self._pos += raw.nbytes

    def close(self) -> int:
        """Finish the file; return the absolute offset of its data region."""
        for name, tag, raw in sorted(self._deferred, key=lambda d: -ST_DTYPES[d[1]][1]):
            self._write(name, tag, raw)
        self._deferred.clear()
        header = dict(self.entries)
        header["__metadata__"] = {"format": "mlx"}
        text = json.dumps(header, separators=(",", ":")).encode()
        data_start = HEADER_RESERVE
        if 8 + len(text) > HEADER_RESERVE:
            data_start = _round_up(8 + len(text), PAGE)
            self._shift_data(data_start - HEADER_RESERVE)
        text = text.ljust(data_start - 8, b" ")
        self._f.seek(0)
        self._f.write(struct.pack("<Q", len(text)) + text)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return data_start

    def _shift_data(self, by: int) -> None:
        """Move the data region `by` bytes later (header larger than reserved)."""
        chunk = 64 * 1024**2
        end = HEADER_RESERVE + self._pos
        while end > HEADER_RESERVE:
            start = max(HEADER_RESERVE, end - chunk)
            self._f.seek(start)
            block = self._f.read(end - start) if self._f.readable() else None
            if block is None:
                raise BundleError("internal: shard not readable for header growth")
            self._f.seek(start + by)
            self._f.write(block)
            end = start

    def abort(self) -> None:
        self._f.close()


def check_output(out: Path | str, force: bool, sources: Iterable[Path | str] = ()) -> None:
    """Refuse an OUT whose replacement could lose data, before any work: one that is or
    holds a source, or (with `force`) anything but a jang bundle or an empty directory."""
    out = Path(out)
    where = out.resolve()
    for src in sources:
        resolved = Path(src).resolve()
        if resolved == where or where in resolved.parents:
            raise BundleError(f"{out} is or holds the source {src}; write the bundle elsewhere")
    if not out.exists() and not out.is_symlink():
        if not out.parent.is_dir():
            raise BundleError(f"{out.parent} is not a directory")
        return
    if not force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise BundleError(
            f"{out} is not a directory; --force replaces only a jang bundle or an empty directory"
        )
    entries = sorted(p.name for p in out.iterdir())
    if entries and not _is_bundle(out):
        raise BundleError(
            f"{out} is not a jang bundle (no valid {MANIFEST}) and holds {len(entries)} "
            f"entries (e.g. {entries[0]}); --force replaces only a jang bundle or an empty "
            "directory"
        )


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(out: Path) -> list[Path]:
    """Remove the temp and old-bundle dirs that killed conversions into `out` left beside
    it (their pid no longer runs); returns what was removed."""
    removed = []
    for kind in ("jang-tmp", "jang-old"):
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdecimal() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def claim_output(out: Path | str, force: bool, sources: Iterable[Path | str] = ()):
    """Hold OUT for one conversion: `check_output`, stale temp dirs swept, and an exclusive
    lock beside it (released by the kernel if the process dies), so that a second
    conversion into the same OUT fails at once instead of replacing the first's result."""
    import fcntl

    out = Path(out)
    check_output(out, force, sources)
    lock_path = out.parent / f".{out.name}.jang-lock"
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BundleError(f"another conversion is writing {out}; wait for it") from None
    try:
        sweep_stale(out)
        yield
    finally:  # only the holder removes the lock file
        lock_path.unlink(missing_ok=True)
        handle.close()


@dataclass
class BundleWriter:
    """Write a bundle into a temp dir beside `out`; `finish()` renames it into place.

    Use as a context manager: an exception (or Ctrl-C) removes the temp dir and
    leaves any existing `out` untouched.
    """

    out: Path
    force: bool = False
    shard_bytes: int = DEFAULT_SHARD_BYTES
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        check_output(self.out, self.force)
        self.tmp = self.out.parent / f".{self.out.name}.jang-tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._shards: list[ShardWriter] = []
        self._shard_of: dict[str, int] = {}
        # stored array name -> its manifest record, filled as each array is added, so every
        # array in a shard has a record by construction (no lookup by name splitting)
        self._records: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    # ---------------------------------------------------------------- add ----

    def _shard(self, nbytes: int) -> int:
        if not self._shards or (
            self._shards[-1].nbytes and self._shards[-1].nbytes + nbytes > self.shard_bytes
        ):
            index = len(self._shards)
            self._shards.append(ShardWriter(self.tmp / f"shard-{index:05d}.safetensors"))
        return len(self._shards) - 1

    def _add_arrays(self, key: str, arrays: dict[str, Any]) -> dict[str, dict[str, Any]]:
        nbytes = sum(int(a.nbytes) for a in arrays.values())
        shard = self._shard(nbytes)
        records = {}
        for suffix, array in arrays.items():
            name = f"{key}.{suffix}"
            self._shards[shard].add(name, array)
            if name in self._records:
                raise BundleError(f"{name} written twice")
            self._shard_of[name] = shard
            records[suffix] = self._records[name] = {"name": name}
        return records

    def add_quantized(
        self,
        module: str,
        weight,
        scales,
        biases,
        *,
        bits: int,
        group_size: int,
        shape: tuple[int, ...],
        source: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Store one quantized module: `{module}.weight/.scales/.biases`."""
        if module in self.tensors:
            raise BundleError(f"{module} written twice")
        arrays = {"weight": weight, "scales": scales, "biases": biases}
        self.tensors[module] = {
            "quantized": True,
            "bits": int(bits),
            "group_size": int(group_size),
            "mode": "affine",
            "shape": [int(d) for d in shape],
            "dtype": str(scales.dtype).removeprefix("mlx.core."),
            "source": source,
            **(extra or {}),
            "arrays": self._add_arrays(module, arrays),
        }

    def add_float(self, name: str, array, *, source: dict[str, Any]) -> None:
        """Store one unquantized tensor under its parameter name (`....weight`)."""
        key, _, suffix = name.rpartition(".")
        if name in self.tensors:
            raise BundleError(f"{name} written twice")
        records = self._add_arrays(key, {suffix: array})
        self.tensors[name] = {
            "quantized": False,
            "shape": [int(d) for d in array.shape],
            "dtype": str(array.dtype).removeprefix("mlx.core."),
            "source": source,
            "arrays": records,
        }

    def add_file(self, name: str, content: str | bytes) -> None:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    # ------------------------------------------------------------- finish ----

    def finish(
        self,
        config: dict[str, Any],
        manifest: dict[str, Any],
        card: Callable[[dict[str, Any]], str] | None = None,
    ) -> Path:
        """Close shards, write config.json, jang.json and the model card (`card` renders
        README.md from the full manifest), move the bundle into place."""
        if not self._shards:
            raise BundleError("no tensors were written")
        n = len(self._shards)
        names = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        shard_info = []
        for shard, final in zip(self._shards, names, strict=False):
            data_start = shard.close()
            shard.path.rename(self.tmp / final)
            for name, entry in shard.entries.items():
                record = self._records[name]
                record.update(
                    shard=final,
                    offset=data_start + entry["data_offsets"][0],
                    nbytes=entry["data_offsets"][1] - entry["data_offsets"][0],
                    shape=entry["shape"],
                    dtype=entry["dtype"],
                    xxh3=shard.checksums[name],
                )
            shard_info.append({"file": final, "sha256": sha256_file(self.tmp / final)})
        if n > 1:
            weight_map = {name: names[self._shard_of[name]] for name in sorted(self._shard_of)}
            total = sum((self.tmp / f).stat().st_size for f in names)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            self.add_file("model.safetensors.index.json", json.dumps(index, indent=2))
        self.add_file("config.json", json.dumps(encode_floats(config), indent=2, allow_nan=False))
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **manifest,
            "shards": shard_info,
            "files": {  # config and tokenizer: validate reports an edit since conversion
                f.name: tensor_checksum(f.read_bytes())
                for f in sorted(self.tmp.iterdir())
                if f.is_file() and f.suffix != ".safetensors"
            },
            "tensors": self.tensors,
        }
        self.add_file(MANIFEST, json.dumps(full, indent=1))
        if card is not None:  # not checksummed: `jang card` rewrites it after an eval
            self.add_file(CARD, card(full))
        return self._move_into_place()

    def _move_into_place(self) -> Path:
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.jang-old-{os.getpid()}"
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return self.out

    def abort(self) -> None:
        for shard in self._shards:
            shard.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------- reading ----


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The bundle's jang.json, checked for format, version and structure (every tensor entry
    and array record has the fields and types readers rely on), so that no reader trips on a
    damaged manifest: each problem is a BundleError naming the file and the entry."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path}: no {MANIFEST} (not a jang bundle)")
    try:
        manifest = json.loads(file.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise BundleError(f"{file}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{file}: not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{file}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{file}: format_version {manifest.get('format_version')} is not supported "
            f"by this jang (reads version {FORMAT_VERSION})"
        )
    problem = _structure_problem(manifest)
    if problem:
        raise BundleError(f"{file}: {problem}")
    return manifest


# field -> the types it must have, for the records readers index
_SHARD_FIELDS = {"file": str}
_ENTRY_FIELDS = {"quantized": bool, "shape": list, "arrays": dict}
_RECORD_FIELDS = {
    "name": str,
    "shard": str,
    "offset": int,
    "nbytes": int,
    "shape": list,
    "dtype": str,
}
_QUANT_FIELDS = {"bits": int, "group_size": int}


def _wrong_fields(obj: Any, fields: dict[str, type]) -> str | None:
    if not isinstance(obj, dict):
        return "is not an object"
    for name, kind in fields.items():
        value = obj.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"has no valid {name!r} ({value!r})"
        if kind is list and not all(isinstance(d, int) and d >= 0 for d in value):
            return f"has a {name!r} that is not a list of sizes ({value!r})"
    return None


def _structure_problem(manifest: dict[str, Any]) -> str | None:
    """The first entry of a manifest that readers could not index, said plainly."""
    shards, tensors = manifest.get("shards"), manifest.get("tensors")
    if not isinstance(shards, list) or not isinstance(tensors, dict):
        return "needs a 'shards' list and a 'tensors' object"
    for i, shard in enumerate(shards):
        if (why := _wrong_fields(shard, _SHARD_FIELDS)) is not None:
            return f"shard {i} {why}"
    for key, entry in tensors.items():
        quantized = isinstance(entry, dict) and entry.get("quantized")
        fields = {**_ENTRY_FIELDS, **(_QUANT_FIELDS if quantized else {})}
        if (why := _wrong_fields(entry, fields)) is not None:
            return f"tensor {key} {why}"
        if quantized and entry.get("mode", "affine") != "affine":
            return f"tensor {key} has mode {entry.get('mode')!r}; jang writes 'affine'"
        if quantized and (entry["bits"] not in BITS or entry["group_size"] not in GROUP_SIZES):
            return (
                f"tensor {key} is {entry['bits']}-bit with group size {entry['group_size']}; "
                f"supported: bits {BITS}, group sizes {GROUP_SIZES}"
            )
        for suffix, rec in entry["arrays"].items():
            if (why := _wrong_fields(rec, _RECORD_FIELDS)) is not None:
                return f"tensor {key}, array {suffix} {why}"
    return None


def read_header(shard: Path) -> tuple[dict[str, Any], int]:
    """(header entries, absolute data start) of a safetensors file."""
    size = shard.stat().st_size
    with open(shard, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BundleError(f"{shard}: truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise BundleError(f"{shard}: header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{shard}: corrupt header ({exc})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{shard}: header is not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        why = _wrong_fields(entry, {"dtype": str, "shape": list, "data_offsets": list})
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if why is None and (len(offsets) != 2 or offsets[0] > offsets[1]):
            why = f"has data_offsets {offsets} that are not [begin, end]"
        if why is not None:
            raise BundleError(f"{shard}: corrupt header: tensor {name} {why}")
    return header, 8 + n


def validate(
    path: Path | str,
    deep: bool = False,
    checksums: bool = True,
    manifest: dict[str, Any] | None = None,
) -> list[str]:
    """Every problem found in a bundle (empty list: valid).

    Checks the manifest against each shard (presence, dtype, shape, offset, bounds, no stray
    tensors), the quantized shapes against bits and group size, config.json's quantization
    dict against the manifest, and the tokenizer; with `checksums` (the default) every
    tensor's bytes against its recorded checksum (`tensor_checksum`, GB/s). `deep` also
    re-hashes the shards against the manifest's sha256. A shard that cannot be read is one
    problem, not one per tensor in it. `manifest`: the one `read_manifest` returned already.
    """
    path = Path(path)
    if manifest is None:
        try:
            manifest = read_manifest(path)
        except BundleError as exc:
            return [str(exc)]
    problems: list[str] = []
    headers: dict[str, tuple[dict[str, Any], int, int]] = {}
    unreadable: set[str] = set()
    for shard in manifest.get("shards", []):
        file = path / shard["file"]
        if not file.is_file():
            problems.append(f"{file}: shard is missing")
            unreadable.add(shard["file"])
            continue
        try:
            header, start = read_header(file)
        except BundleError as exc:
            problems.append(str(exc))
            unreadable.add(shard["file"])
            continue
        headers[shard["file"]] = (header, start, file.stat().st_size)
        if deep and sha256_file(file) != shard.get("sha256"):
            problems.append(f"{file}: sha256 differs from the manifest (file changed or corrupt)")
    seen: set[tuple[str, str]] = set()
    for key, entry in manifest.get("tensors", {}).items():
        problems += _check_entry(key, entry, headers, seen, unreadable)
    for file, (header, _, _) in headers.items():
        for name in header:
            if (file, name) not in seen:
                problems.append(f"{path / file}: tensor {name} is not in the manifest")
    if checksums and not problems:  # the bytes only mean something where the layout holds
        problems += checksum_problems(path, manifest)
    problems += config_problems(path, manifest)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        problems.append(f"{path}: no tokenizer (tokenizer.json or tokenizer.model)")
    return problems


def checksum_problems(path: Path | str, manifest: dict[str, Any]) -> list[str]:
    """Every tensor whose stored bytes differ from its manifest checksum, and the config and
    tokenizer files that changed since the conversion, one line each (the bundle's layout must already be
    valid). Bundles written before checksums pass."""
    import mmap

    path = Path(path)
    problems = []
    files = manifest.get("files")
    for name, recorded in sorted(files.items() if isinstance(files, dict) else []):
        file = path / str(name)
        if not isinstance(recorded, str) or file.parent != path or not file.is_file():
            continue  # a missing config or tokenizer is reported on its own
        if tensor_checksum(file.read_bytes()) != recorded:
            problems.append(f"{file}: changed since the conversion (its checksum differs)")
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest.get("tensors", {}).values():
        for rec in entry.get("arrays", {}).values():
            if isinstance(rec.get("xxh3"), str):
                by_shard.setdefault(rec["shard"], []).append(rec)
    for shard, records in sorted(by_shard.items()):
        with open(path / shard, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                for rec in records:
                    data = view[rec["offset"] : rec["offset"] + rec["nbytes"]]
                    if tensor_checksum(data) != rec["xxh3"]:
                        problems.append(
                            f"{path / shard}: tensor {rec['name']}: bytes differ from the "
                            "manifest's checksum (file changed or corrupt)"
                        )
                    data.release()
            finally:
                view.release()
    return problems


def _check_entry(key, entry, headers, seen, unreadable) -> list[str]:
    problems = []
    for suffix, rec in entry.get("arrays", {}).items():
        name = rec.get("name", f"{key}.{suffix}")
        where = f"{rec.get('shard')}: tensor {name}"
        if rec.get("shard") in unreadable:
            continue  # reported once, for the shard
        if rec.get("shard") not in headers:
            problems.append(f"{where}: shard not found")
            continue
        header, start, size = headers[rec["shard"]]
        seen.add((rec["shard"], name))
        h = header.get(name)
        if h is None:
            problems.append(f"{where}: missing from the shard header")
            continue
        begin, end = h["data_offsets"]
        if h["dtype"] != rec.get("dtype") or list(h["shape"]) != list(rec.get("shape", [])):
            problems.append(
                f"{where}: manifest says {rec.get('dtype')} {rec.get('shape')}, "
                f"shard has {h['dtype']} {h['shape']}"
            )
        if start + begin != rec.get("offset") or end - begin != rec.get("nbytes"):
            problems.append(f"{where}: offset/size differ from the manifest")
        if start + end > size:
            problems.append(f"{where}: data runs past the end of the file (truncated shard?)")
        itemsize = ST_DTYPES.get(h["dtype"], (None, 1))[1]
        count = int(np.prod(h["shape"])) if h["shape"] else 1
        if end - begin != count * itemsize:
            problems.append(f"{where}: {end - begin} bytes for shape {h['shape']}")
    if entry.get("quantized"):
        problems += _check_quantized_shapes(key, entry)
    return problems


def _check_quantized_shapes(key: str, entry: dict[str, Any]) -> list[str]:
    bits, gs = entry.get("bits"), entry.get("group_size")
    arrays = entry.get("arrays", {})
    if set(arrays) != {"weight", "scales", "biases"}:
        return [f"{key}: quantized entry needs weight, scales and biases"]
    if len(entry["shape"]) < 2:
        return [f"{key}: a quantized matrix needs a shape of 2 or more dimensions"]
    in_dim = entry["shape"][-1]
    w, s = arrays["weight"].get("shape", []), arrays["scales"].get("shape", [])
    problems = []
    if not w or w[-1] * 32 != in_dim * bits:
        problems.append(f"{key}: weight {w} does not hold {in_dim} {bits}-bit codes per row")
    if not s or s[-1] * gs != in_dim or arrays["biases"].get("shape") != s:
        problems.append(f"{key}: scales/biases {s} do not match group size {gs} for {in_dim}")
    return problems


def config_problems(path: Path | str, manifest: dict[str, Any]) -> list[str]:
    """config.json against the manifest: present, JSON, and a quantization dict that gives
    every quantized module the manifest's bits and group size (what stock mlx-lm reads)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return [f"{path}: no config.json"]
    try:
        config = json.loads(file.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        return [f"{file}: invalid JSON ({exc})"]
    if not isinstance(config, dict):
        return [f"{file}: not a JSON object"]
    quant = config.get("quantization")
    if not isinstance(quant, dict):
        return [f"{file}: no quantization dict (stock mlx_lm.load would not quantize)"]
    problems = []
    for key, entry in manifest.get("tensors", {}).items():
        if not entry.get("quantized"):
            continue
        q = quant.get(key)
        if not isinstance(q, dict):
            problems.append(f"{file}: quantization has no entry for {key}")
        elif (q.get("bits"), q.get("group_size")) != (entry["bits"], entry["group_size"]):
            problems.append(
                f"{file}: {key} is {q.get('bits')}-bit g{q.get('group_size')} in config.json "
                f"but {entry['bits']}-bit g{entry['group_size']} in the manifest"
            )
    return problems


def quantization_config(manifest_tensors: dict[str, dict[str, Any]], float_modules) -> dict:
    """mlx-lm's `quantization` dict: the most common (bits, gs) as default plus an
    explicit entry for every quantized module and `false` for float Linear/Embedding
    modules, so nothing is inferred from shapes."""
    counts: dict[tuple[int, int], int] = {}
    for entry in manifest_tensors.values():
        if entry.get("quantized"):
            k = (entry["bits"], entry["group_size"])
            counts[k] = counts.get(k, 0) + 1
    bits, gs = max(counts, key=lambda k: (counts[k], k)) if counts else (4, 64)
    quant: dict[str, Any] = {"group_size": gs, "bits": bits, "mode": "affine"}
    for key, entry in sorted(manifest_tensors.items()):
        if entry.get("quantized"):
            quant[key] = {
                "group_size": entry["group_size"],
                "bits": entry["bits"],
                "mode": "affine",
            }
    for module in sorted(float_modules):
        quant[module] = False
    return quant

"""Throughput of the checksums a bundle could carry per tensor, on the same buffer.

`jang validate` re-hashes every tensor of a bundle and `jang.load(verify=True)` every tensor it
maps, so the checksum must run near memory speed: seconds for GBs. Prints GB/s per function
(best of `--reps`) over one buffer of random bytes, hashed in place from a memoryview, as the
bundle code hashes the mapped shards.

    python bench/checksum_speed.py [--mb 512] [--reps 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import zlib

import xxhash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    data = memoryview(os.urandom(args.mb << 20))
    functions = {
        "xxhash.xxh3_64": lambda b: xxhash.xxh3_64(b).hexdigest(),
        "xxhash.xxh3_128": lambda b: xxhash.xxh3_128(b).hexdigest(),
        "zlib.crc32": lambda b: zlib.crc32(b),
        "hashlib.sha256": lambda b: hashlib.sha256(b).hexdigest(),
        "hashlib.blake2b": lambda b: hashlib.blake2b(b).hexdigest(),
    }
    print(f"{args.mb} MB buffer, best of {args.reps}; uptime: {os.getloadavg()}")
    print("| checksum | GB/s |\n|---|---|")
    for name, fn in functions.items():
        best = min(_timed(fn, data) for _ in range(args.reps))
        print(f"| {name} | {len(data) / best / 1e9:.2f} |")


def _timed(fn, data) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

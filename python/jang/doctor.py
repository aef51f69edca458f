"""`jang doctor`: what this installation can do, and what is broken."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, object]:
    """Facts about this installation as a flat dict (also used by tests)."""
    import jang

    info: dict[str, object] = {
        "jang": jang.__version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "mlx": _version_of("mlx"),
    }
    backends = [d for d in ("mlx-cpu", "mlx-metal", "mlx-cuda-13", "mlx-cuda-12") if _version_of(d)]
    info["mlx_backend_packages"] = ", ".join(backends) or "none"
    try:
        import mlx.core as mx

        info["mlx_default_device"] = str(mx.default_device())
        info["metal_available"] = bool(mx.metal.is_available())
        info["cuda_available"] = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    except Exception as exc:  # report, don't crash: this is the diagnostic tool
        info["mlx_error"] = f"{type(exc).__name__}: {exc}"
        return info
    try:
        ext = jang.load_extension()
    except Exception as exc:
        info["extension"] = f"FAILED: {type(exc).__name__}: {exc}"
        return info
    info["extension"] = Path(ext.__file__).name
    info["extension_path"] = str(Path(ext.__file__).parent)
    info["mlx_built_against"] = ext.mlx_version_built()
    info["cpu_simd"] = ext.cpu_simd_level()
    metallib = Path(ext.__file__).parent / "lib" / "jang.metallib"
    if ext.metal_enabled():
        info["metallib"] = str(metallib) if metallib.is_file() else f"MISSING: {metallib}"
    else:
        info["metallib"] = "not built (no Metal on this platform)"
    return info


def problems(info: dict[str, object]) -> list[str]:
    """Human-readable problems found in `collect()`'s output."""
    found = []
    if "mlx_error" in info:
        found.append(f"mlx.core does not import: {info['mlx_error']}")
    if info.get("mlx_backend_packages") == "none" and info["platform"].startswith("Linux"):
        found.append("no MLX backend installed; run: pip install 'mlx[cpu]==0.32.4'")
    ext = str(info.get("extension", ""))
    if ext.startswith("FAILED"):
        found.append(f"jang._ext does not load: {ext[8:]}")
    built = info.get("mlx_built_against")
    if built and built != info.get("mlx"):
        found.append(f"jang was built against mlx {built} but mlx {info.get('mlx')} is installed")
    if str(info.get("metallib", "")).startswith("MISSING"):
        found.append(f"jang.metallib is missing: {info['metallib'][9:]}")
    return found


def run() -> int:
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    issues = problems(info)
    for issue in issues:
        print(f"PROBLEM: {issue}", file=sys.stderr)
    if not issues:
        print("ok")
    return 1 if issues else 0

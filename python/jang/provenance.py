"""Where a source model came from: name, Hugging Face repo and revision, license, its own
quantization, and every weight file's size and checksum.

Recorded in the bundle's manifest (``source``) at conversion, so the model card
(`jang.card`) can say exactly what a bundle was made from. Everything is read from the
files themselves: the path of a Hugging Face cache snapshot (``models--ORG--NAME/
snapshots/REV``), a README's YAML front matter and LICENSE file, GGUF ``general.*``
metadata. Nothing is fetched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import xxhash

from jang.mlx_view import MlxView
from jang.source import GGUFSource, ModelSource, SafetensorsSource

LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt")
_HUB_URL = re.compile(r"^https?://huggingface\.co/([\w.-]+/[\w.-]+)")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_BLOCK = 1 << 24


def file_checksum(path: Path) -> str:
    """XXH3-64 of a whole file (the hash the manifest uses for tensors), read in blocks."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (README.md), or {} if it has none."""
    import yaml  # a dependency of transformers, which mlx-lm requires

    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _hub_snapshot(path: Path) -> tuple[str | None, str | None]:
    """(repo id, revision) when `path` lies in a Hugging Face cache snapshot."""
    parts = path.resolve().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/", 1), parts[i + 2]
    return None, None


def _safetensors(source: SafetensorsSource) -> dict[str, Any]:
    folder = source.path if source.path.is_dir() else source.path.parent
    card = front_matter(folder / "README.md")
    repo, revision = _hub_snapshot(folder)
    named = source.config.get("_name_or_path")
    if repo is None and isinstance(named, str) and _REPO_ID.match(named):
        repo = named
    quant = source.config.get("quantization_config") or {}
    return {
        "name": repo.split("/")[-1] if repo else folder.name,
        "repo": repo,
        "revision": revision,
        "license": card.get("license"),
        "license_name": card.get("license_name"),
        "license_link": card.get("license_link"),
        "pipeline_tag": card.get("pipeline_tag"),
        "quantized": quant.get("quant_method") if isinstance(quant, dict) else None,
        "license_file": next((f for f in LICENSE_FILES if (folder / f).is_file()), None),
    }


def _gguf(source: GGUFSource) -> dict[str, Any]:
    import gguf

    md = source.metadata
    repo = None
    for key in ("general.source.repo_url", "general.base_model.0.repo_url", "general.repo_url"):
        match = _HUB_URL.match(str(md.get(key, "")))
        if match:
            repo = match.group(1)
            break
    file_type = md.get("general.file_type")
    try:
        quantized = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        quantized = None
    name = md.get("general.name") or md.get("general.basename") or source.path.stem
    return {
        "name": str(name),
        "repo": repo,
        "revision": None,
        "license": md.get("general.license"),
        "license_name": md.get("general.license.name"),
        "license_link": md.get("general.license.link"),
        "pipeline_tag": None,
        "quantized": None if quantized in ("ALL_F32", "F16", "BF16") else quantized,
        "license_file": None,
    }


def provenance(source: ModelSource) -> dict[str, Any]:
    """The ``source`` record of a manifest (besides path, format and parameters): see the
    module docstring. ``files`` maps each weight file to its size and XXH3-64."""
    if isinstance(source, MlxView):  # weights rewritten on read: the file is the inner source
        source = source.source
    if isinstance(source, GGUFSource):
        info = _gguf(source)
    elif isinstance(source, SafetensorsSource):
        info = _safetensors(source)
    else:
        info = {"name": Path(source.path).name}
    info["files"] = {
        f.name: {"bytes": f.stat().st_size, "xxh3": file_checksum(f)} for f in source.weight_files()
    }
    return {k: v for k, v in info.items() if v is not None}


def license_path(source: ModelSource, record: dict[str, Any]) -> Path | None:
    """The source's LICENSE file named in `record`, to be copied into the bundle."""
    name = record.get("license_file")
    if not name:
        return None
    folder = source.path if source.path.is_dir() else source.path.parent
    return folder / name

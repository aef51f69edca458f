"""Data flows one way: source -> plan -> quant -> bundle -> convert -> runtime -> evaluate.

Every module of the package belongs to one stage; it may import (at the top or inside a
function) only from its own stage or earlier ones. A new module must be given a stage here,
which is the moment to ask where it belongs (docs/ARCHITECTURE.md).
"""

import ast
from pathlib import Path

import jang

PACKAGE = Path(jang.__file__).resolve().parent

# stage -> module name patterns ("x.*": the package x and everything under it)
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("jang", "jang._version", "jang._ext", "jang.errors", "jang.formats",
              "jang.tables", "jang.progress")),
    ("input", ("jang.config", "jang.data", "jang.text", "jang.arch", "jang.gguf_file",
               "jang.source", "jang.provenance", "jang.mlx_models", "jang.mlx_view",
               "jang.torch_models")),
    ("plan", ("jang.plan.*", "jang.estimate")),
    ("quant", ("jang.quant.*",)),
    ("bundle", ("jang.bundle", "jang.public_bundle", "jang.summary", "jang.card")),
    ("convert", ("jang.convert.*",)),
    ("runtime", ("jang.runtime", "jang.kernels", "jang.generate")),
    ("evaluate", ("jang.engines", "jang.evaluate", "jang.plots")),
    ("app", ("jang.cli", "jang.__main__", "jang.commands.*", "jang.doctor")),
]  # fmt: skip
# the one import that runs against the flow on purpose: `jang.load`, the public shortcut
ALLOWED = {("jang", "jang.runtime")}


def stage_of(module: str) -> int:
    for index, (_, patterns) in enumerate(STAGES):
        for pattern in patterns:
            base = pattern.removesuffix(".*")
            if module == base or (pattern.endswith(".*") and module.startswith(base + ".")):
                return index
    raise AssertionError(f"{module} has no stage in tests/test_layers.py")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if "include" not in parts:
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The jang modules a file imports, anywhere in it (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "jang"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jang":
            for alias in node.names:  # `from jang import plan` imports the module jang.plan
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def test_every_module_has_a_stage():
    for name in modules():
        stage_of(name)


def test_no_module_imports_from_a_later_stage():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        for target in sorted(imports_of(path, set(known) | {"jang._ext"})):
            if (name, target) in ALLOWED:
                continue
            if stage_of(target) > stage_of(name):
                wrong.append(
                    f"{name} ({STAGES[stage_of(name)][0]}) imports {target} "
                    f"({STAGES[stage_of(target)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jang.evaluate import evaluate\n")
    assert imports_of(bad, {"jang.evaluate"}) == {"jang.evaluate"}
    assert stage_of("jang.evaluate") > stage_of("jang.quant.tensor")

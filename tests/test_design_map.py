"""docs/design.md is the project's map: every module under src/simu_lightning/ has a line in its package
map (issue 44), so a new file cannot land without saying what it is for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "simu_lightning"

# "  pipeline/  what a run does" (a package) or "    tofu.py, lume.py  the real benchmarks" (its modules)
ENTRY = re.compile(r"^(?P<indent> +)(?P<names>[\w.]+(?:/|\.py)(?:, [\w.]+\.py)*)(?: |$)")


def package_map(text: str) -> set[str]:
    """The module paths (relative to src/simu_lightning/) that design.md's package map lists, read from the
    indentation of its tree: a package's modules are indented two more than its own line."""
    block = text.split("## Package map", 1)[1].split("```")[1].split("src/simu_lightning/\n", 1)[1]
    listed, packages = set(), []  # packages: (indent, name) of the enclosing packages
    for line in block.splitlines():
        if line and not line.startswith(" "):  # conf/, tests/, perf/: the tree of src/ has ended
            break
        if not (match := ENTRY.match(line)):
            continue
        indent = len(match["indent"])
        packages = [(i, name) for i, name in packages if i < indent]
        prefix = "".join(f"{name}/" for _, name in packages)
        names = match["names"]
        if names.endswith("/"):
            packages.append((indent, names.rstrip("/")))
            continue
        listed.update(prefix + name for name in names.split(", "))
    return listed


def is_module_worth_a_line(path: Path) -> bool:
    """Every module, and a package's __init__.py when it defines something (a class or a function) rather
    than only re-exporting."""
    if path.name != "__init__.py":
        return True
    tree = ast.parse(path.read_text())
    return any(isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) for node in tree.body)


def test_the_parser_reads_nesting_and_lists():
    text = (
        "## Package map\n```\nsrc/simu_lightning/\n  data/   the data\n    tofu.py, lume.py  real\n"
        "    inner/  x\n      a.py   y\n  top.py   z\nperf/   not src: loop.py, x.py\n      c.py  z\n```\n"
    )
    assert package_map(text) == {"data/tofu.py", "data/lume.py", "data/inner/a.py", "top.py"}


def test_every_module_has_a_line_in_the_design_map():
    listed = package_map((ROOT / "docs" / "design.md").read_text())
    modules = {str(path.relative_to(SOURCE)) for path in SOURCE.rglob("*.py") if is_module_worth_a_line(path)}
    assert not modules - listed, f"docs/design.md's package map leaves out {sorted(modules - listed)}"
    assert not listed - modules, (
        f"docs/design.md's package map lists modules that do not exist: {sorted(listed - modules)}"
    )

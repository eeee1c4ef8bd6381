"""The shape the project committed to (issue 44): a thin entry point and small functions. Read from the
source with ast, so a long function cannot land unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONGEST_FUNCTION = 60
LONGEST_ENTRY_POINT = 40


def long_functions(text: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `text` longer than `limit` lines, decorators left out."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit
    ]


def test_long_functions_counts_the_lines_from_def_to_the_last_statement():
    body = "".join(f"    x{i} = {i}\n" for i in range(3))
    text = f"def short():\n{body}\n\nclass A:\n    def method(self):\n{body.replace('    ', '        ')}"
    assert long_functions(text, 4) == []
    assert long_functions(text, 3) == [("short", 4), ("method", 4)]


def test_no_function_under_src_is_longer_than_60_lines():
    found = {
        f"{path.relative_to(ROOT)}:{name}": lines
        for path in sorted((ROOT / "src").rglob("*.py"))
        for name, lines in long_functions(path.read_text(), LONGEST_FUNCTION)
    }
    assert not found, f"functions longer than {LONGEST_FUNCTION} lines: {found}"


def test_run_py_is_hydras_main_and_one_call():
    lines = (ROOT / "run.py").read_text().splitlines()
    assert len(lines) <= LONGEST_ENTRY_POINT, f"run.py has {len(lines)} lines (at most {LONGEST_ENTRY_POINT})"

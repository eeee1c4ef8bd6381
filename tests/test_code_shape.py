"""The shape the project committed to (issue 44): a thin entry point and small functions. Read from the
source with ast, so a long function cannot land unnoticed."""

from __future__ import annotations

import ast
import re
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


# The modules that read the composed Hydra config (issue 44): the run's plan and the builders it uses, the
# orchestration of run.py before any plan exists (how many runs, in which processes), and the memory
# command's own plan (`python -m simu_lightning.memory` composes a config and reads what it plans from).
# Every stage reads the plan instead.
READS_CONFIG = {
    "simu_lightning/pipeline/plan.py",
    "simu_lightning/pipeline/building.py",
    "simu_lightning/pipeline/launch.py",
    "simu_lightning/memory/__main__.py",
    "simu_lightning/memory/setup.py",
    "simu_lightning/memory/shape.py",
}
CONFIG_NAME = re.compile(r"^(cfg|\w+_cfg)$")


def config_reads(text: str) -> list[int]:
    """Lines that read a Hydra config: an attribute, item or .get of a name like `cfg` / `model_cfg`, or of
    an object's `.cfg`. (Handing the config on unread, as the conductor hands it to RunPlan.of, is no read.)"""
    lines = []
    for node in ast.walk(ast.parse(text)):
        base = node.value if isinstance(node, (ast.Attribute, ast.Subscript)) else None
        if isinstance(base, ast.Name) and CONFIG_NAME.match(base.id):
            lines.append(node.lineno)
        elif isinstance(base, ast.Attribute) and base.attr == "cfg":
            lines.append(node.lineno)
    return sorted(set(lines))


def test_config_reads_finds_attribute_item_and_type_uses():
    text = "def f(cfg, plan, x):\n    a = cfg.model\n    b = plan.cfg.seed\n    c = x.cfg\n    d = cfg['k']\n"
    text += "def g(model_cfg: DictConfig):\n    return model_cfg.get('dtype')\ndef h(config: dict):\n    return config['k']\n"
    assert config_reads(text) == [2, 3, 5, 7]


def test_only_the_plan_and_the_commands_read_the_hydra_config():
    found = {
        name: lines
        for path in sorted((ROOT / "src").rglob("*.py"))
        if (name := str(path.relative_to(ROOT / "src"))) not in READS_CONFIG
        and (lines := config_reads(path.read_text()))
    }
    assert not found, f"modules that read the Hydra config outside the plan (file: lines): {found}"

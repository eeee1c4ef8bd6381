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


# The modules that read the composed Hydra config (issue 44): the run's plan and the builders it uses
# (building.py also builds what run.py's orchestration reads before a plan exists, Launch, and what the memory
# command plans from, memory_setup). Every stage reads the plan instead.
READS_CONFIG = {"simu_lightning/pipeline/plan.py", "simu_lightning/pipeline/building.py"}
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


# the records the stages hand each other (pipeline/conductor.py), by the names the stages give them
STAGE_RECORDS = {"plan", "benchmark", "models", "baselines", "unlearned", "attacked", "requests", "outcome"}


def assignments_into_records(text: str) -> list[tuple[int, str]]:
    """(line, target) of every assignment into a stage record: `baselines.attacks.model = ...`,
    `plan.out = ...`, `unlearned.weights[k] = ...` (a name rebound whole is no assignment into it)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else []
        )
        for target in targets:
            root = target
            while isinstance(root, (ast.Attribute, ast.Subscript)):
                root = root.value
            if root is not target and isinstance(root, ast.Name) and root.id in STAGE_RECORDS:
                found.append((node.lineno, ast.unparse(target)))
    return found


def test_assignments_into_records_sees_attributes_and_items_but_not_rebinding():
    text = "baselines.attacks.model = m\nplan = other\nunlearned.weights['x'] = 1\nmodels.seconds += 1\nx.y = 2\n"
    assert assignments_into_records(text) == [
        (1, "baselines.attacks.model"),
        (3, "unlearned.weights['x']"),
        (4, "models.seconds"),
    ]


def test_no_stage_assigns_to_another_stages_record():
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted((ROOT / "src" / "simu_lightning" / "pipeline").glob("*.py"))
        if (hits := assignments_into_records(path.read_text()))
    }
    assert not found, f"assignments into a stage's record: {found}"


def test_the_records_the_stages_hand_each_other_are_frozen():
    import dataclasses

    from simu_lightning.pipeline.attacks import AttackBaselines, Attacked
    from simu_lightning.pipeline.baselines import Baselines
    from simu_lightning.pipeline.building import TrainerSettings
    from simu_lightning.pipeline.plan import RunPlan
    from simu_lightning.pipeline.prepare import Models
    from simu_lightning.attribution.callback import Selection
    from simu_lightning.pipeline.unlearn import Unlearned

    for record in (RunPlan, TrainerSettings, Models, Baselines, AttackBaselines, Attacked, Unlearned, Selection):
        assert dataclasses.is_dataclass(record) and record.__dataclass_params__.frozen, record.__name__

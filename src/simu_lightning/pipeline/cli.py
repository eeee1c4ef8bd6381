"""Command-line checks that give one clear line instead of Hydra's multi-line report, for the most
common slips: naming a config-group option that does not exist (`method=sgd`), or setting a group's node
as a key (`method.optimizer=sgd`, where `method/optimizer=sgd` chooses the option)."""

from __future__ import annotations

import re
from pathlib import Path

_SIMPLE_VALUE = re.compile(r"^[\w.\-]+(,[\w.\-]+)*$")  # a plain option or a comma sweep, no sweep functions


def unknown_group_option(argv: list[str], conf_dir: Path) -> str | None:
    """The error line for the first `group=option` override whose option has no YAML file, or None. The
    groups and their options are the folders and files of conf/: nothing is listed again here."""
    groups = {p.relative_to(conf_dir).as_posix() for p in conf_dir.rglob("*") if p.is_dir()}
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or not _SIMPLE_VALUE.match(value):
            continue
        group = key.replace(".", "/")
        if group not in groups or group.startswith("hydra"):  # (Hydra's own groups take its plugins' options too)
            continue
        available = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        if key != group:  # method.optimizer=sgd: a key, where the option of the group method/optimizer was meant
            return f"{key}={value}: choose an option of the group {group} with {group}={value} (one of {', '.join(available)})"
        for option in value.split(","):
            if option not in available:
                return f"unknown {group} {option!r}: choose one of {', '.join(available)} ({group}=...)"
    return None


def unquoted_condition(argv: list[str]) -> str | None:
    """Hydra's override grammar refuses `<` and `>` outside quotes; say how to quote a stopping rule."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.endswith("stop_when") and any(c in value for c in "<>") and value[:1] not in "\"'":
            return f"{key}: quote the condition for Hydra, e.g. '{key}=\"{value}\"'"
    return None

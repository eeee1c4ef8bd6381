"""Command-line checks that give one clear line instead of Hydra's multi-line report, for the most
common slip: naming a config-group option that does not exist (`method=sgd`)."""
from __future__ import annotations

import re
from pathlib import Path

GROUPS = ("model", "benchmark", "method", "loss", "attribution", "trainer", "logger")
_SIMPLE_VALUE = re.compile(r"^[\w.\-]+(,[\w.\-]+)*$")  # a plain option or a comma sweep, no sweep functions


def unknown_group_option(argv: list[str], conf_dir: Path) -> str | None:
    """The error line for the first `group=option` override whose option has no YAML file, or None."""
    for arg in argv:
        group, sep, value = arg.lstrip("+").partition("=")
        if not sep or group not in GROUPS or not _SIMPLE_VALUE.match(value):
            continue
        available = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        for option in value.split(","):
            if option not in available:
                return f"unknown {group} {option!r}: choose one of {', '.join(available)} ({group}=...)"
    return None

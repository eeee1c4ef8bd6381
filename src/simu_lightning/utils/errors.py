"""The one error type users see: a single line naming the setting, file, row or column at fault."""


class SimuError(Exception):
    """Bad input. `run.py` (pipeline/launch.py) prints it as one line (`error: ...`) and exits with status 2."""

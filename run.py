"""simu-lightning entry point: `python run.py [group=option ...] [key=value ...]` (see README.md).

Hydra's main and one call: how the command becomes runs (a sweep's jobs under torchrun or SLURM, tuning
trials) is pipeline/launch.py, what a run does pipeline/conductor.py."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from simu_lightning.pipeline.cli import unknown_group_option, unquoted_condition

SCRIPT = Path(__file__).resolve()
CONF = SCRIPT.parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from simu_lightning.pipeline.launch import launch  # heavy imports after Hydra has parsed the command line

    return launch(cfg, SCRIPT)


if __name__ == "__main__":
    if problem := unknown_group_option(sys.argv[1:], CONF) or unquoted_condition(sys.argv[1:]):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
    from simu_lightning.distributed import exit_if_group_closed

    exit_if_group_closed()

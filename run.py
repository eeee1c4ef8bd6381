"""simu-lightning entry point: `python run.py [group=option ...] [key=value ...]` (see README.md)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from simu_lightning.cli import unknown_group_option
from simu_lightning.errors import SimuError

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from simu_lightning.pipeline import run  # heavy imports after Hydra has parsed the command line

    try:
        results = run(cfg)
    except SimuError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return results["aggregate"]["after"]  # what an Optuna sweep maximises


if __name__ == "__main__":
    if problem := unknown_group_option(sys.argv[1:], CONF):
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()

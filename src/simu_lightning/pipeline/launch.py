"""How `python run.py` becomes runs: one run, a tuning trial at every tuning seed, or one job of a Hydra
sweep whose trainer runs several processes (relaunched under torchrun, or started in every task of a SLURM
job by the submitit launcher). What a run does is the conductor's business (conductor.py); this module
only decides how many times and in which processes it runs, and what a sweep's job returns to Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from simu_lightning.pipeline.building import Launch, preparing, tuning_trial_run
from simu_lightning.pipeline.conductor import run
from simu_lightning.utils.errors import SimuError


def launch(cfg: DictConfig, script: Path) -> float | None:
    """run.py's one call: the run (or runs) that `cfg` describes, with bad input printed as one line (exit
    status 2) and a pre-emption as the command that resumes it (143). Returns what a sweep maximises."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        settings = Launch.of(cfg)
        if HydraConfig.get().mode == RunMode.MULTIRUN and settings.processes > 1:
            if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # hydra/launcher=slurm: srun started every task
                return sweep_job_under_slurm(cfg, settings)
            return sweep_job_under_torchrun(cfg, settings, script)
        if settings.tuning_seeds:
            return tuning_trial(cfg, settings.tuning_seeds)
        results = run(cfg)
    except SimuError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # pre-empted: a checkpoint of the last step was saved (see checkpointing.py)
        print(
            f"interrupted by SIGTERM: run the same command with hydra.run.dir={settings.output_dir} to resume",
            file=sys.stderr,
        )
        sys.exit(143)
    return search_value(results) if results else None  # (only rank 0 of a multi-process run has the results)


def sweep_job_under_torchrun(cfg: DictConfig, settings: Launch, script: Path) -> float | None:
    """One job of a Hydra sweep whose trainer runs several processes.

    Lightning would relaunch this script with the sweep's own command line (the known trap: every
    relaunched process starts the sweep again), so instead the job prepares its target here, in one
    process, and then runs itself under torchrun as a single run in the job's directory."""
    from simu_lightning.utils.processes import is_launched_externally

    if settings.num_nodes > 1:
        raise SimuError(
            "a multi-node job of a Hydra sweep (-m) is a SLURM job: add hydra/launcher=slurm "
            "(pip install -e '.[cluster]'), or run each job with torchrun or srun (docs/guide.md, 'Several processes')"
        )
    if is_launched_externally():
        raise SimuError("-m under torchrun/srun would start the sweep in every process: drop -m, or drop torchrun")
    run(preparing(cfg))
    job_dir = HydraConfig.get().runtime.output_dir
    overrides = list(HydraConfig.get().overrides.task)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={settings.processes}",
        str(script),
        *overrides,
        f"hydra.run.dir={job_dir}",
        "hydra.output_subdir=null",
    ]
    if subprocess.run(command).returncode != 0:
        raise SimuError(f"the job's processes failed (command: {' '.join(command)}); see {job_dir}")
    return search_value(json.loads((Path(job_dir) / "results.json").read_text()))


def sweep_job_under_slurm(cfg: DictConfig, settings: Launch) -> float | None:
    """One job of a sweep that the submitit launcher submitted as a SLURM job (hydra/launcher=slurm): srun
    started this script's job function in each of the job's tasks, one per GPU on every node, and each
    task is one of the run's processes, as Lightning's SLURM environment sees them. Task 0 prepares the
    target in one process (the others wait for it), then every task runs."""
    import time

    tasks = int(os.environ["SLURM_NTASKS"])
    if tasks != settings.processes:
        raise SimuError(
            f"the SLURM job has {tasks} tasks and the trainer {settings.processes} processes (trainer.devices x "
            "trainer.num_nodes): one task per GPU, as conf/hydra/launcher/slurm.yaml sets"
        )
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    ready, failed = job_dir / ".target_ready", job_dir / ".target_failed"
    started = time.time()
    if int(os.environ["SLURM_PROCID"]) == 0:
        failed.unlink(missing_ok=True)  # of an earlier try of this job in its folder
        try:
            with outside_slurm():
                run(preparing(cfg))
        except BaseException:
            failed.touch()  # the other tasks stop waiting
            raise
        ready.touch()
    # (a marker of an earlier try: "ready" means the target is cached; "failed" counts only if it is new)
    while not ready.exists():
        if failed.exists() and failed.stat().st_mtime >= started - 60:
            raise SimuError(f"task 0 could not prepare the target: see its log ({job_dir})")
        time.sleep(5)
    results = run(cfg)
    return search_value(results) if results else None


def outside_slurm():
    """SLURM's task variables hidden for a while, so that one task can work as a single process."""
    from unittest import mock

    return mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, clear=True)


def tuning_trial(cfg: DictConfig, seeds: tuple[int, ...]) -> float:
    """A search trial tuned on several seeds (objective.seeds): the run once per seed (building.py's
    tuning_trial_run); the trial's value is the mean of theirs."""
    values = [search_value(run(tuning_trial_run(cfg, seed, seeds))) for seed in seeds]
    return sum(values) / len(values)


def search_value(results: dict) -> float | None:
    """What an Optuna sweep maximises: the utility at matched forgetting when an `objective` is configured
    (hparams_search=optuna), else the aggregate (after unlearning, or of an evaluation-only run)."""
    if "objective" in results:
        return results["objective"]["value"]
    if "aggregate" not in results:  # mode=attribute: nothing evaluated
        return None
    return results["aggregate"].get("after", results["aggregate"].get("evaluated"))

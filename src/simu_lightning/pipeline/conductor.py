"""One SIMU run, as the method section reads: the conductor that knows the order of the stages.

  plan = RunPlan.of(cfg)                        every setting built and checked (plan.py)
  benchmark = load_benchmark(plan)              1. the splits (prepare.py)
  models = load_models(plan, benchmark)         2. the target (fine-tuned or planted, cached) and its retain model
  baselines = evaluate_baselines(...)           3. what the unlearned model is compared with (baselines.py)
  unlearned = unlearn(...)                      4. one Lightning fit: evaluate before | attribution | unlearning
                                                   steps | evaluations during | after (unlearn.py); with
                                                   unlearning.requests, one fit per request (continual.py)
  attacked = attack_unlearned(...)             5. robustness: the attacks on copies of it (attacks.py); lm-eval
  results = assemble_results(...)               6. results.json, a pure function (results.py)
  write_unlearned_run(...)                      7. the run's files, the tables (outputs.py)

mode=prepare, mode=attribute and mode=evaluate stop earlier (modes.py).
"""

from __future__ import annotations

import json
import logging

import lightning as L
from omegaconf import DictConfig

from simu_lightning.distributed import close_process_group
from simu_lightning.evaluation.tables import print_examples, print_results
from simu_lightning.pipeline.attacks import attack_unlearned
from simu_lightning.pipeline.baselines import evaluate_baselines, evaluate_harness
from simu_lightning.pipeline.building import use_tensor_cores
from simu_lightning.pipeline.dashboards import finish, log_results
from simu_lightning.pipeline.modes import attribute_only, evaluate_checkpoint, prepare_only
from simu_lightning.pipeline.outputs import write_model, write_run
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.prepare import load_benchmark, load_models
from simu_lightning.pipeline.continual import unlearn_requests
from simu_lightning.pipeline.results import assemble_results, generation_rows, manifest_keys
from simu_lightning.pipeline.unlearn import unlearn, unsharded_model
from simu_lightning.utils.devices import recorded_forwards
from simu_lightning.utils import phase_progress
from simu_lightning.utils.logging import quiet_libraries

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict | None:
    """The whole run; with several processes every one runs it, and rank 0 writes the outputs. With
    SIMU_FORWARD_DEVICES set, the device of every forward pass is recorded by stage (utils/devices.py)."""
    with recorded_forwards():
        return run_stages(cfg)


def run_stages(cfg: DictConfig) -> dict | None:
    plan = RunPlan.of(cfg)
    use_tensor_cores(plan.trainer.device)
    quiet_libraries()
    phase_progress.configure(plan.progress.every_seconds)
    if (finished := finished_results(plan)) is not None:
        return finished
    if plan.tuned_note:
        log.info(plan.tuned_note)
    L.seed_everything(plan.seed, verbose=False)
    benchmark = load_benchmark(plan)
    if plan.mode == "evaluate":
        return evaluate_checkpoint(plan, benchmark)
    if plan.mode == "prepare":
        return prepare_only(plan, benchmark)
    models = load_models(plan, benchmark)
    if plan.mode == "attribute":
        return attribute_only(plan, benchmark, models)
    baselines = evaluate_baselines(plan, benchmark, models)
    unlearned = (unlearn_requests if plan.requests else unlearn)(plan, benchmark, models, baselines)
    try:
        if not unlearned.is_global_zero:
            return None
        model = unsharded_model(plan, unlearned)
        attacked = attack_unlearned(plan, baselines.attacks, baselines.evaluator, model)
        lm_eval = evaluate_harness(plan, model, models.tokenizer)
        results = assemble_results(plan, benchmark, models, baselines, unlearned, attacked, lm_eval)
        write_unlearned_run(plan, benchmark, models, baselines, unlearned, attacked, results)
        return results
    finally:
        close_process_group()  # every process waits for rank 0's files, then the group goes down together


def finished_results(plan: RunPlan) -> dict | None:
    """A run directory that holds results.json is finished: its results, unless `rerun=true`."""
    done = plan.out / "results.json"
    if done.exists() and not plan.rerun:
        log.info("already finished: %s holds its results (rerun=true runs it again)", plan.out)
        return json.loads(done.read_text())
    plan.out.mkdir(parents=True, exist_ok=True)
    return None


def write_unlearned_run(plan, benchmark, models, baselines, unlearned, attacked, results) -> None:
    write_model(plan.out, unlearned.model, models.tokenizer, unlearned.weights)
    rows = generation_rows(baselines, unlearned, attacked)
    keys = manifest_keys(models, unlearned.selection)
    write_run(plan, results, rows, keys, unlearned.world_size)
    evaluated = unlearned.before.rows + unlearned.after.rows
    log_results(unlearned.loggers, results, evaluated)
    finish(unlearned.loggers)
    print_results(results)
    print_examples(evaluated, benchmark.forget)

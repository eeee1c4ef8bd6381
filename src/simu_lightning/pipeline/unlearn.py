"""Stage 4: unlearning, as one Lightning fit. The evaluation before, the attribution (SIMU stage 1), the
unlearning steps (stage 2), the evaluations during and after, all run inside it, so that every one of
them sees the model as the strategy made it: sharded over every process, which all take part."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L

from simu_lightning.attribution.callback import NeuronAttribution, Selection
from simu_lightning.data.benchmark import Benchmark
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.distributed import full_state_dict
from simu_lightning.evaluation.before_cache import before_cache_path
from simu_lightning.evaluation.callback import UnlearningEvaluation
from simu_lightning.evaluation.types import Evaluation
from simu_lightning.evaluation.probe import ProbePlan, probe_plan, resolved_full_around
from simu_lightning.evaluation.qa import GENERATION_METRICS, TRUTH_RATIO_METRICS, truth_ratio_splits_needed
from simu_lightning.models.architecture import architecture_of
from simu_lightning.pipeline.baselines import Baselines
from simu_lightning.pipeline.building import loggers
from simu_lightning.pipeline.checkpointing import checkpoint_callbacks
from simu_lightning.pipeline.dashboards import log_attribution, log_config
from simu_lightning.pipeline.fits import parallel_settings
from simu_lightning.models.loading import without_weights
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.prepare import Models
from simu_lightning.pipeline.progress import ProgressLines, wanted
from simu_lightning.pipeline.results import fit_trained_parameters
from simu_lightning.pipeline.stopping import StopWhen
from simu_lightning.unlearning.module import UnlearningModule
from simu_lightning.utils.devices import is_sharded, stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unlearned:
    """What the fit hands on (one fit, or a run of continual requests: pipeline/continual.py): the
    unlearned model and where unlearning ended, read off the fit's callbacks and module when it is over."""

    model: object  # the unlearned model (the fit's own: sharded where the fit sharded it)
    weights: dict  # its whole state dict, gathered from the shards (complete on rank 0)
    before: Evaluation
    after: Evaluation
    points: list[dict]  # the curve: every evaluation point, before to after
    stopped: dict  # where and why unlearning stopped
    probe: ProbePlan | None  # which points were scored in full
    evaluation_seconds: float  # the evaluations inside the fit
    selection: Selection  # the critical neurons (and heads; on a planted target, their localisation)
    step_seconds: float  # the unlearning steps themselves
    memory_bytes: dict  # per process: weights, gradients, optimiser state, frozen copy
    win_rates: list[float]  # Sophia's win rate at every step (NaN where it had none)
    trained_parameters: dict[str, int]  # what the optimiser could change, under the fit's masks
    world_size: int  # processes
    is_global_zero: bool
    loggers: tuple  # where the run logs (the dashboards of stage 7)
    requests: list[dict] | None = None  # a run of continual requests: results.json `requests`


def unlearned_of(trainer: L.Trainer, module: UnlearningModule, evaluations, stopping, attribution) -> Unlearned:
    """The record of a finished fit, read off its module and callbacks."""
    return Unlearned(
        model=module.model,
        weights=full_state_dict(module.model),
        before=evaluations.before,
        after=evaluations.after,
        points=list(evaluations.points),
        stopped=dict(stopping.stopped),
        probe=evaluations.probe,
        evaluation_seconds=evaluations.seconds,
        selection=attribution.selection(),
        step_seconds=module.step_seconds,
        memory_bytes=module.memory_bytes(),
        win_rates=list(module.win_rates),
        trained_parameters=fit_trained_parameters(module, attribution),
        world_size=trainer.world_size,
        is_global_zero=trainer.is_global_zero,
        loggers=tuple(trainer.loggers),
    )


def unsharded_model(plan: RunPlan, unlearned: Unlearned):
    """The unlearned model as the stages after the fit use it: the fit's own, or, where the fit sharded it
    (trainer=fsdp in one process; several are refused), a plain model of its gathered weights. The attacks
    copy the model they attack, and an FSDP2 module cannot be copied."""
    model = unlearned.model
    if not is_sharded(model):
        return model
    plain = without_weights(model.config, plan.model.dtype, model.config._attn_implementation)
    plain.load_state_dict(unlearned.weights, assign=True)
    held = set(unlearned.weights)
    for name, buffer in model.named_buffers():  # what no state dict holds (rotary tables): the fit's own
        if name not in held:
            owner, _, attribute = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(attribute, buffer.detach().clone(), persistent=False)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def frozen_copy(plan: RunPlan, model):
    """The frozen target an objective compares with (NPO's reference): a copy of the target, or in a
    sharded run its architecture on the meta device, which receives rank 0's weights when it is sharded
    (no process holds a second whole copy)."""
    if not plan.trainer.several_processes:
        return copy.deepcopy(model)
    return without_weights(model.config, plan.model.dtype, model.config._attn_implementation)


def unlearning_module(plan: RunPlan, models: Models, parallel: dict | None = None) -> UnlearningModule:
    """`parallel`: the run's parallel settings as resolved for it (pipeline/fits.py; None: as configured)."""
    frozen_target = frozen_copy(plan, models.model) if plan.loss.needs_frozen_target else None
    return UnlearningModule(
        models.model,
        plan.method,
        plan.loss,
        architecture_of(models.model, plan.model.architecture),
        frozen_target=frozen_target,
        seed=plan.seed,
        parallel=plan.parallel if parallel is None else parallel,
    )


def unlearning_data(plan: RunPlan, benchmark: Benchmark, models: Models) -> UnlearningDataModule:
    data = UnlearningDataModule(
        benchmark,
        models.tokenizer,
        models.fmt,
        max_length=plan.model.max_length,
        seed=plan.seed,
        alternates=plan.loss.refusals if getattr(plan.loss, "needs_alternates", False) else (),
        **asdict(plan.data),
    )
    data.encode()  # now: a row with nothing to unlearn is refused before the fit
    return data


def neuron_attribution(plan: RunPlan, models: Models, kind=NeuronAttribution, **extra) -> NeuronAttribution:
    """The run's stage 1 callback (`kind`: a subclass with its `extra` settings, as a continual request's)."""
    return kind(
        plan.attribution,
        output_dir=plan.out,
        cache_dir=plan.cache_dir,
        target_id=models.target.target_id,
        seed=plan.seed,
        planted=models.planted_neurons,
        **extra,
    )


def before_cache_file(plan: RunPlan, models: Models, baselines: Baselines) -> Path | None:
    """Where the target's evaluation before unlearning is cached (None: evaluation.cache_before=false)."""
    if not plan.evaluation.cache_before:
        return None
    return before_cache_path(
        plan.cache_dir, models.target.target_id, baselines.evaluator, plan.model.dtype, plan.trainer.cache_devices
    )


def points_in_full(plan: RunPlan, benchmark: Benchmark) -> ProbePlan | None:
    """Which points during unlearning are evaluated in full (evaluation.during.full_around; None: all)."""
    levels, setting = resolved_full_around(
        plan.evaluation.during_full_around,
        benchmark.levels,
        plan.stop_when,
        processes=2 if plan.trainer.several_processes else 1,
    )
    return probe_plan(
        levels,
        plan.stop_when,
        benchmark.eval_splits,
        TRUTH_RATIO_METRICS,
        setting,
        sample=plan.evaluation.during_max_examples is not None,
        generation_metrics=GENERATION_METRICS,
    )


def unlearning_evaluation(
    plan: RunPlan, benchmark: Benchmark, models: Models, baselines: Baselines, cache_before: bool = True
) -> UnlearningEvaluation:
    """The evaluations before, during and after the fit, as the plan sets them (`cache_before`: see unlearn)."""
    return UnlearningEvaluation(
        baselines.evaluator,
        plan.out,
        every_n_steps=plan.evaluation.every_n_steps,
        during_max_examples=plan.evaluation.during_max_examples,
        ends_at=plan.stop_when.holds if plan.stop_when is not None else None,
        during_truth_ratio_splits=(
            truth_ratio_splits_needed(benchmark, plan.stop_when)
            if plan.evaluation.during_truth_ratios == "needed"
            else None
        ),
        before_file=before_cache_file(plan, models, baselines) if cache_before else None,
        probe=points_in_full(plan, benchmark),
    )


@stage("unlearn")
def unlearn(
    plan: RunPlan,
    benchmark: Benchmark,
    models: Models,
    baselines: Baselines,
    attribution: NeuronAttribution | None = None,
    cache_before: bool = True,
) -> Unlearned:
    """`attribution`: a stage 1 other than the plan's own (a continual request's, pipeline/continual.py);
    `cache_before=false`: the model is not the target, so its evaluation before is not the cached one."""
    data = unlearning_data(plan, benchmark, models)
    module = unlearning_module(plan, models, parallel_settings(plan, data))  # a GPU run that cannot fit stops here
    attribution = attribution or neuron_attribution(plan, models)
    evaluations = unlearning_evaluation(plan, benchmark, models, baselines, cache_before)
    stopping = StopWhen(plan.stop_when, evaluations)
    checkpoint, resume_from = checkpoint_callbacks(plan.checkpoint_every_n_epochs, plan.out)
    every = plan.progress.every_n_steps
    progress = [ProgressLines(every, evaluations, plan.stop_when)] if wanted(every) else []
    trainer = plan.trainer.make(
        callbacks=[evaluations, stopping, attribution, *progress, *checkpoint],
        logger=loggers(plan.loggers) or False,
        enable_checkpointing=bool(checkpoint),
    )
    if trainer.is_global_zero:
        log_config(trainer.loggers, plan.config)
    log.info(
        "unlearning: method %s, loss %s%s",
        plan.method.name,
        type(plan.loss).__name__,
        f", resuming from {resume_from}" if resume_from else "",
    )
    # the unlearning's own draws (dropout) from the run's seed alone, whatever ran or was cached before
    L.seed_everything(plan.seed, verbose=False)
    trainer.fit(module, data, ckpt_path=resume_from)
    if trainer.is_global_zero and attribution.ranking is not None:
        log_attribution(
            trainer.loggers,
            attribution.ranking,
            attribution.neurons,
            attribution.chosen_t if plan.attribution.t == "auto" else plan.attribution.t,
        )
    return unlearned_of(trainer, module, evaluations, stopping, attribution)

"""The rules that span several config nodes, checked before any work so that a bad combination costs
seconds, not a fine-tuning run. A node's own settings check themselves where they are built (the
`_target_` of attribution, evaluation, method, robustness and benchmark.planted); what is left here
relates one node to another. Each names the settings and what is valid."""

from __future__ import annotations

from simu_lightning.attribution.rules import selection_rule, selects_no_heads
from simu_lightning.unlearning.methods import HEADS
from simu_lightning.utils.errors import SimuError

MODES = ("unlearn", "evaluate", "attribute", "prepare")
ONE_PROCESS = (
    "robustness: the attack stage runs in one process; unlearn with several, then attack the saved model: "
    "python run.py mode=evaluate model.source=<run>/unlearned_model robustness=standard"
)


def _positive(name: str, value, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise SimuError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_optim(optim: dict) -> None:
    """`optim`, which the methods' optimisers read through interpolation (method.optimizer.rho: ${optim.rho})."""
    rho = optim.get("rho", "auto")
    if rho != "auto" and (isinstance(rho, (bool, str)) or rho < 0):
        raise SimuError(f"optim.rho must be a number >= 0 or auto, got {rho!r}")
    if not 0 < optim.get("target_win_rate", 0.3) < 1:
        raise SimuError(f"optim.target_win_rate must be in (0, 1), got {optim.get('target_win_rate')!r}")
    _positive("optim.calibration_step", optim.get("calibration_step", 1), integer=True)
    if optim.get("fused", "auto") not in (True, False, "auto"):
        raise SimuError(f"optim.fused must be true, false or auto, got {optim.get('fused')!r}")


LOW_PRECISION_DTYPES = ("bfloat16", "float16")
LOW_PRECISION_TRAINERS = ("bf16-true", "16-true", "bf16", "16", "half")


def low_precision_weights(plan) -> str | None:
    """The setting that makes the trained weights bf16 or fp16 (model.dtype, or a '-true' trainer
    precision, which converts them), or None."""
    if plan.model.dtype in LOW_PRECISION_DTYPES:
        return f"model.dtype={plan.model.dtype}"
    if plan.trainer.precision in LOW_PRECISION_TRAINERS:
        return f"trainer.precision={plan.trainer.precision}"
    return None


def check_weights_precision(plan) -> None:
    """Unlearning in bf16 / fp16 weights only when asked for: a step at an unlearning lr is far below a
    bf16 weight's rounding step (the optimisers then keep fp32 masters: optim/master.py)."""
    setting = low_precision_weights(plan)
    if setting and plan.mode == "unlearn" and not plan.optim.get("low_precision_weights"):
        raise SimuError(
            f"{setting}: unlearning in bf16/fp16 weights rounds away most updates at unlearning learning rates; "
            "keep float32 weights and compute in bf16 with trainer.precision=bf16-mixed (the GPU default, "
            "trainer.precision=auto), or opt in with optim.low_precision_weights=true (fp32 master weights and "
            "optimiser state)"
        )


def check(plan) -> None:
    """The rules between the plan's settings (RunPlan.of runs them once every setting is built)."""
    if plan.mode not in MODES:
        raise SimuError(f"mode must be one of {', '.join(MODES)}, got {plan.mode!r}")
    check_weights_precision(plan)
    _positive("trainer.max_epochs", plan.trainer.max_epochs, integer=True)
    check_optim(plan.optim)
    checkpointing = plan.parallel.get("activation_checkpointing", False)
    if checkpointing not in (True, False, "auto"):
        raise SimuError(f"parallel.activation_checkpointing must be true, false or auto, got {checkpointing!r}")
    check_selections(plan)
    check_processes(plan)
    check_stopping(plan)


MMLU_SCORES = {"mmlu", "final_score"}  # the scores that MMLU makes (LUME's final score averages it in)


def check_stopping(plan) -> None:
    """MMLU (LUME's, 5-shot through lm-eval) runs before and after only (at every point it would be most of a
    run), so no stopping rule can read it."""
    if plan.stop_when is not None and plan.evaluation.mmlu and (read := MMLU_SCORES & plan.stop_when.metrics()):
        raise SimuError(
            f"unlearning.stop_when={plan.stop_when} reads {', '.join(sorted(read))}, which needs MMLU; MMLU runs "
            "before and after unlearning only: stop on task_aggregate or a split's metric"
        )


def check_selections(plan) -> None:
    """The planted oracle needs a planted target; mode=attribute needs a method that selects neurons."""
    planted = plan.benchmark.keywords.get("planted")  # models/planting.Planting, or None
    if plan.attribution.selection == "planted" and not getattr(planted, "fraction", None):
        raise SimuError(
            "attribution.selection=planted is the oracle mask of a planted target: set benchmark.planted.fraction"
        )
    head_selection = plan.attribution.head_selection or plan.attribution.selection
    if plan.method.trainable == HEADS and not selection_rule(head_selection).selects_heads:
        raise SimuError(selects_no_heads(head_selection))
    masked = plan.method.critical_neuron_mask and plan.method.trainable != "attention"
    if plan.mode == "attribute" and not masked:
        raise SimuError(f"mode=attribute: method {plan.method.name!r} selects no neurons (use method=simu)")


def check_processes(plan) -> None:
    """What runs in one process only, refused under several (a sharded or multi-device trainer, torchrun)."""
    if not plan.trainer.several_processes:
        return
    if plan.robustness is not None:
        raise SimuError(ONE_PROCESS)
    if plan.requests is not None:
        raise SimuError(
            "unlearning.requests: continual requests run in one process (each request's fit starts from the "
            "model the one before left, which a sharded fit would have to gather and shard again)"
        )
    if plan.evaluation.during_full_around not in (None, "auto"):
        raise SimuError(
            "evaluation.during.full_around: probe points run in one process (the weights kept for the point "
            "before a crossing would be one process's shards, which FSDP's gathered copy does not read); "
            "leave it auto or null under several processes"
        )
    if plan.evaluation.mmlu:
        raise SimuError(
            "evaluation.mmlu: LUME's MMLU runs through lm-eval in one process (under FSDP every process would "
            "run all of it); unlearn on one GPU (trainer=default: OLMo-1B fits one 80 GB GPU), or evaluate "
            "the saved model: python run.py mode=evaluate model.source=<run>/unlearned_model evaluation.mmlu=true"
        )
    if plan.evaluation.harness.tasks:
        raise SimuError(
            "evaluation.lm_eval: lm-eval runs in one process; unlearn with several, then evaluate the saved "
            "model: python run.py mode=evaluate model.source=<run>/unlearned_model evaluation.lm_eval.tasks=[...]"
        )

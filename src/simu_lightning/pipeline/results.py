"""Stage 6: results.json, assembled from what the stages handed on (pure functions: no model, no file)."""

from __future__ import annotations

import logging

import torch

from simu_lightning.evaluation import Evaluation
from simu_lightning.attribution.update_localisation import (
    neuron_changes,
    neuron_parameter_names,
    update_localisation,
)
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.models.loading import saved_tensors
from simu_lightning.models.heads import head_masks
from simu_lightning.models.planting import KEEPS, KNOWS, planted_check
from simu_lightning.evaluation.splits import evaluated_rows
from simu_lightning.pipeline.objective import matched_utility
from simu_lightning.unlearning.module import win_rate_summary

log = logging.getLogger(__name__)


def planted_summary(target, planting, planted: dict, clean: Evaluation | None, before: Evaluation | None) -> dict:
    """results.json `planted`: where the clean model is, how P was drawn, P's size per layer, the clean
    model's figures, and whether the planted target knows the forget set and kept the rest (`check`)."""
    check = planted_check(before.summary, clean.summary) if before and clean else None
    if check and not check["holds"]:
        log.warning(
            "the planted target does not meet its bar: forget EM %.3f (needs >= %.1f), EM below the clean model's "
            "by %s (at most %.2f); see benchmark.planted (replay, epochs, fraction)",
            check["forget_exact_match"],
            KNOWS,
            ", ".join(f"{split} {drop:.3f}" for split, drop in check["exact_match_drop"].items()),
            KEEPS,
        )
    return {
        "clean_model": target.retain_model,
        "fraction": planting.fraction,
        "layers": list(planting.layers) if planting.layers is not None else None,
        "parameters": planting.parameters,
        "seed": planting.seed,
        "neurons": {name: int(mask.sum()) for name, mask in planted.items()},
        **({"clean": clean.summary} if clean else {}),
        **({"check": check} if check else {}),
    }


def selection_results(attribution) -> dict:
    """The critical neurons per layer (and heads, by index), what exclude_retain dropped, and a planted
    target's localisation."""
    return {
        **({"critical_neurons": attribution.kept} if attribution.kept else {}),
        **({"critical_neurons_t": attribution.chosen_t} if attribution.settings.t == "auto" else {}),
        **({"critical_neurons_dropped_shared_with_retain": attribution.dropped} if attribution.dropped else {}),
        **({"critical_heads": attribution.heads_kept} if attribution.heads is not None else {}),
        **(
            {"critical_heads_t": attribution.head_t}
            if attribution.heads and attribution.settings.t_of("heads") == "auto"
            else {}
        ),
        **(
            {"selection": attribution.settings.selection, "localisation": attribution.localisation}
            if attribution.localisation
            else {}
        ),
    }


def trained_parameters(
    model: torch.nn.Module,
    arch,
    neurons: dict[str, torch.Tensor] | None = None,
    heads: dict[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """results.json `trained_parameters`: how many parameter entries the optimiser may change, in total and in
    the attention projections (q/k/v/o, or a fused qkv) and the MLP down projections. A trainable parameter
    (requires_grad) counts whole, except where a mask confines it: a down projection masked to its critical
    `neurons` counts its rows x kept columns, a q/k/v/o weight or bias masked to the critical `heads` its
    kept rows or columns (models/heads.py). `neurons` and `heads` are the masks the fit gave the optimiser."""
    masks: dict[str, torch.Tensor] = {}
    if neurons:
        shape = [1, 1]
        shape[arch.neuron_dim] = -1
        masks |= {f"{name}.weight": mask.reshape(shape) for name, mask in neurons.items()}
    if heads:
        masks |= head_masks(model, arch, heads)
    attention, down = set(attention_projections(model, arch)), set(down_projections(model, arch))
    counts = {"total": 0, "attention": 0, "down_proj": 0}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        n = int(masks[name].expand(param.shape).sum()) if name in masks else param.numel()
        module = name.rsplit(".", 1)[0]
        counts["total"] += n
        counts["attention"] += n if module in attention else 0
        counts["down_proj"] += n if module in down else 0
    return counts


def fit_trained_parameters(module, attribution) -> dict[str, int]:
    """trained_parameters of a fit: its module's trainable parameters under the masks its attribution set."""
    method = module.method
    return trained_parameters(
        module.model,
        module.architecture,
        attribution.neurons if method.needs_attribution else None,
        attribution.heads if method.critical_head_mask else None,
    )


def timings(models, baselines, unlearned, attacked) -> dict[str, float]:
    """Seconds per part of the run, each measured where it ran (the evaluations and the attribution run
    inside the fit, between the unlearning steps)."""
    parts = {
        "prepare_target": models.seconds,
        "evaluation": baselines.seconds["evaluation"] + unlearned.evaluation_seconds,
        "attribution": unlearned.selection.seconds,
        "unlearning": unlearned.step_seconds,
    }
    if attacked is not None:
        parts["robustness"] = baselines.seconds.get("robustness", 0.0) + attacked.seconds
    return {name: round(value, 2) for name, value in parts.items()}


def limited_rows(plan, benchmark) -> dict:
    """results.json `evaluated_rows`, where evaluation.max_examples cut a split: the rows read (their places
    in the split), the same for every run seed (evaluation.sample_seed; evaluation/splits.py)."""
    settings = plan.evaluation
    rows = {
        name: evaluated_rows(benchmark, name, settings.max_examples, settings.sample_seed)
        for name in benchmark.eval_splits
    }
    cut = {name: picked for name, picked in rows.items() if len(picked) < len(benchmark[name])}
    return {"evaluated_rows": cut} if cut else {}


def points_record(unlearned) -> dict:
    """results.json `points`: the forget levels whose crossings were evaluated in full (null: every point
    was), the steps of the full points, and those of the points that scored only what the levels and the
    stopping rule read."""
    probe = unlearned.probe
    return {
        "levels": str(probe.levels) if probe is not None and probe.levels is not None else None,
        "full": [p["step"] for p in unlearned.points if p.get("full", True)],
        "not_full": [p["step"] for p in unlearned.points if not p.get("full", True)],
    }


def update_landing(plan, models, unlearned) -> dict:
    """results.json `planted.update`: where the run's weight change landed against P (the target's weights
    read from its folder; the unlearned model's from the fit's record)."""
    arch = architecture_of(unlearned.model, plan.model.architecture)
    before = saved_tensors(models.target.source, neuron_parameter_names(unlearned.model, arch))
    changes = neuron_changes(unlearned.model, arch, before, unlearned.weights)
    return update_localisation(changes, models.planted_neurons)


def assemble_results(plan, benchmark, models, baselines, unlearned, attacked=None, lm_eval: dict | None = None) -> dict:
    """results.json: the stages' records in (`attacked`: pipeline/attacks.Attacked, `lm_eval`: lm-eval's
    tasks on the unlearned model; a run of continual requests adds one entry per request)."""
    before, after = unlearned.before, unlearned.after
    stopped = {**unlearned.stopped, "rule": str(plan.stop_when) if plan.stop_when else None}
    results = {
        "method": plan.method.name,
        "benchmark": benchmark.name,
        "model": plan.model.name,
        "target": models.target.source,
        "before": before.summary,
        "after": after.summary,
        "aggregate": {"before": benchmark.aggregate_of(before.summary), "after": benchmark.aggregate_of(after.summary)},
        "scores": {"before": before.scores, "after": after.scores},
        "stopped": {**stopped, "max_epochs": plan.trainer.max_epochs},
        "timings_s": timings(models, baselines, unlearned, attacked),
        "processes": unlearned.world_size,
        "memory_mb_per_process": {k: round(v / 2**20, 3) for k, v in unlearned.memory_bytes.items()},
        "trained_parameters": unlearned.trained_parameters,
        **({"sophia": sophia} if (sophia := win_rate_summary(unlearned.win_rates)) else {}),
        **({"base": baselines.base_model.summary} if baselines.base_model else {}),
        **(
            {
                "planted": planted_summary(
                    models.target, benchmark.planted, models.planted_neurons, baselines.clean_model, before
                )
                | {"update": update_landing(plan, models, unlearned)}
            }
            if models.planted_neurons
            else {}
        ),
        **({"robustness": attacked.results} if attacked else {}),
        **({"lm_eval": {"before": baselines.lm_eval, "after": lm_eval}} if baselines.lm_eval else {}),
        **selection_results(unlearned.selection),
        **limited_rows(plan, benchmark),
        "points": points_record(unlearned),
    }
    if plan.objective:
        results["objective"] = matched_utility(unlearned.points, **plan.objective)
    return with_requests(results, unlearned) if unlearned.requests is not None else results


def with_requests(results: dict, unlearned) -> dict:
    """results.json of a run of requests (pipeline/continual.py): one entry per request, and the run's
    timings over every request (the rest of results.json already reads the whole run's record: the whole
    benchmark's evaluations, every request's win rates, the union of their masks)."""
    entries = unlearned.requests
    parts = entries[0]["timings_s"]
    totals = {part: round(sum(e["timings_s"][part] for e in entries), 2) for part in parts}
    # the evaluations on the whole benchmark (the target, each request's point) come on top of the views'
    totals["evaluation"] = round(totals["evaluation"] + results["timings_s"]["evaluation"], 2)
    return {**results, "timings_s": {**results["timings_s"], **totals}, "requests": entries}


def generation_rows(baselines, unlearned, attacked=None) -> list[dict]:
    """generations.jsonl: every evaluated example of every stage, in the order the stages ran."""
    rows = (baselines.base_model.rows if baselines.base_model else []) + (
        baselines.clean_model.rows if baselines.clean_model else []
    )
    rows += baselines.retain_model_ratios + unlearned.before.rows + unlearned.after.rows
    return rows + (attacked.rows if attacked else [])


def manifest_keys(models, selection) -> dict:
    return {
        "target": models.target.target_id,
        "retain_model": models.target.retain_model,
        **{f"attribution_{split}": key for split, key in selection.keys.items()},
    }

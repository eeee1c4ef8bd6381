"""Evaluation at the hardware's pace, on the embedded default's target (issue 25, item 2):

- the suite's generation (every split's prompts in one length-sorted pass) against a plain `model.generate`
  loop over the same prompts (each split in its own order, in batches of evaluation.batch_size);
- one evaluation point of the default run (the whole suite: generation, likelihoods, truth ratios), in
  tokens through the model per second, against the unlearning step's own tokens per second (a SIMU step on
  batches of the default's shape: forward, backward, the GNB estimate's extra pass);
- the share of a whole `python run.py` (target cached) that its evaluations take, from its timings, at the
  default (the points around the benchmark's levels in full) against every point in full, and the report's
  values at the levels from both (issue 42; limit: a share of at most 0.40).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from perf.common import median_seconds
from perf.loop import part, plain_step, prepare
from perf.targets import ROOT, trained_target
from simu_lightning.data.formatting import PromptFormat, encode_prompt
from simu_lightning.evaluation.evaluate import Evaluator
from simu_lightning.evaluation.generation import _generate, generations_by_split
from simu_lightning.evaluation.splits import limited


def counting_tokens(model) -> tuple[list[int], object]:
    """A hook that adds up the tokens every forward of `model` processes (a decoding step: one a row)."""
    seen = [0]

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen[0] += int(ids.numel()) if ids is not None else 0

    return seen, model.register_forward_pre_hook(count, with_kwargs=True)


SMOKE = ["benchmark.num_authors=4", "benchmark.forget_fraction=0.25", "benchmark.holdout_fraction=0.25"]


def untrained_tiny(benchmark, folder: Path, fmt: PromptFormat, max_length: int):
    """The smoke profile's stand-in for the target: an untrained tiny model."""
    from simu_lightning.data.datamodule import encode_split
    from simu_lightning.models import tiny
    from simu_lightning.models.loading import load_pretrained

    texts = [r[c] for split in benchmark.splits.values() for r in split for c in ("question", "answer")]
    tiny.create(folder, texts, vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model, tokenizer = load_pretrained(folder)
    return model, tokenizer, encode_split(benchmark[benchmark.forget], tokenizer, fmt, max_length)


def run(repeats: int = 3, whole_run: bool = True, smoke: bool = False, seeds=(0, 1, 2), setup: str = "default") -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["paths.output_dir=outputs/perf", *(SMOKE if smoke else [])])
    fmt, benchmark = PromptFormat(**cfg.model.prompt), instantiate(cfg.benchmark)
    with tempfile.TemporaryDirectory() as folder:
        if smoke:
            model, tokenizer, forget = untrained_tiny(benchmark, Path(folder), fmt, cfg.model.max_length)
        else:
            model, tokenizer, forget = trained_target("default")
        result = measure(cfg, benchmark, fmt, model.eval(), tokenizer, forget, repeats)
    return result | (run_share(tuple(seeds), setup) if whole_run else {})


def measure(cfg, benchmark, fmt, model, tokenizer, forget: list[dict], repeats: int) -> dict:
    settings = instantiate(cfg.evaluation).for_model(cfg.model.max_length, benchmark.max_new_tokens)
    evaluator = Evaluator(tokenizer, fmt, benchmark, settings)
    prompts = {
        name: [encode_prompt(tokenizer, fmt, q) for q in limited(benchmark, name, settings)["question"]]
        for name in benchmark.eval_splits
    }
    new, size = settings.max_new_tokens, settings.batch_size
    sorted_pass = median_seconds(lambda: generations_by_split(model, tokenizer, prompts, new, size), repeats)
    plain = median_seconds(lambda: [_generate(model, tokenizer, p, new, size) for p in prompts.values()], repeats)
    seen, hook = counting_tokens(model)
    evaluator(model, "during")
    point_tokens = seen[0]
    hook.remove()
    point = median_seconds(lambda: evaluator(model, "during"), repeats)
    # the unlearning step on batches of the default's shape: data.batch_size forget rows, retain_per_forget
    # times as many retain rows, each as long as the forget rows are on average
    rows, length = cfg.data.batch_size, round(sum(len(e["input_ids"]) for e in forget) / len(forget))
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batch = {
        "forget": part(vocab, rows, length, length // 2, generator),
        "retain": part(vocab, rows * cfg.data.retain_per_forget, length, length // 2, generator),
    }
    optimizer = prepare(model.train(), "simu")
    step = median_seconds(lambda: plain_step(model, optimizer, batch), repeats)
    step_tokens = sum(p["input_ids"].numel() for p in batch.values())
    return {
        "prompts": sum(map(len, prompts.values())),
        "generation_sorted_s": round(sorted_pass, 3),
        "generation_plain_loop_s": round(plain, 3),
        "ratio_sorted_to_plain": round(plain / sorted_pass, 3),
        "evaluation_point_s": round(point, 3),
        "evaluation_tokens_per_s": round(point_tokens / point, 1),
        "step_s": round(step, 4),
        "step_tokens_per_s": round(step_tokens / step, 1),
        "ratio_evaluation_to_step_tokens_per_s": round(point_tokens / point / (step_tokens / step), 3),
    }


# issue 42: a run's time goes to unlearning (evaluation.during.full_around=auto: only the points around the
# benchmark's levels in full); the values the report reads at its levels are those of every point in full
EVALUATION_SHARE_LIMIT = 0.40
DEFAULT_LEVELS = (0.5, 0.2, 0.1)


def one_run(overrides: list[str], out: Path) -> dict:
    """`python run.py OVERRIDES` in this process: its results.json, and its curve as the report reads it."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from simu_lightning.pipeline import run as run_pipeline
    from simu_lightning.report.runs import find_runs

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            del cfg["hydra"]
        results = run_pipeline(cfg)
    return {"results": results, "curve": find_runs([out])[0].curve}


def wall(results: dict) -> float:
    """The run's time in its stages (timings_s), without starting Python."""
    return sum(results["timings_s"].values())


def share(results: dict) -> float:
    timings = results["timings_s"]
    return round(timings["evaluation"] / sum(timings.values()), 3)


def at_levels(curve: list[dict], metric: str, levels=DEFAULT_LEVELS) -> dict:
    """The report's values at each forget level: every metric of the complete points, interpolated."""
    from simu_lightning.report.matched import at_forget_level
    from simu_lightning.unlearning.stopping import Condition

    complete = next(p for p in curve if p.get("full", True))
    metrics = [f"{split}.{m}" for split, by_metric in complete["summary"].items() for m in by_metric]
    return {level: at_forget_level(curve, Condition(metric, "<=", level), metrics) for level in levels}


# the SmolLM2 setup of docs/results.md, its levels the report's there
SMOLLM2 = ("experiment=laptop_smollm2_tofu", "method=simu", f"benchmark.path={ROOT.parent / 'shared/data/tofu'}")
# the limit per setup (issue 42): the default's evaluation share; SmolLM2's wall time against every point in full
SHARE_SETUPS = {
    "default": {
        "overrides": (),
        "metric": "forget.exact_match",
        "levels": DEFAULT_LEVELS,
        "limit": ("share_default", EVALUATION_SHARE_LIMIT),
    },
    "smollm2_tofu": {
        "overrides": SMOLLM2,
        "metric": "forget.rougeL_recall",
        "levels": (0.4, 0.3, 0.2),
        "limit": ("wall_ratio", 0.5),
    },
}


def run_share(seeds: tuple[int, ...] = (0,), setup: str = "default") -> dict:
    """`python run.py` (target cached) at the default, evaluation.during.full_around=auto, against the same
    run with every point in full, side by side in this process, per seed: the evaluations' share of each
    run (timings_s; target and "before" cached, as in every run of a sweep after the first) and whether the
    report's values at forget EM 0.5 / 0.2 / 0.1 are equal (to the last digit) where the two runs stop at the
    same step. Limit (SHARE_SETUPS): the default's share at most EVALUATION_SHARE_LIMIT; SmolLM2's run at
    most half as long as with every point in full."""
    overrides, metric, levels, (limited, limit) = (
        SHARE_SETUPS[setup][k] for k in ("overrides", "metric", "levels", "limit")
    )
    rows = []
    with tempfile.TemporaryDirectory() as out:
        one_run([*overrides, "seed=0"], Path(out) / "warm")  # the target and its evaluation before, cached
        for seed in seeds:
            full = one_run(
                [*overrides, f"seed={seed}", "evaluation.during.full_around=null"], Path(out) / f"full{seed}"
            )
            cheap = one_run([*overrides, f"seed={seed}"], Path(out) / f"auto{seed}")
            same = full["results"]["stopped"]["step"] == cheap["results"]["stopped"]["step"]
            values = [at_levels(run["curve"], metric, levels) for run in (full, cheap)]
            rows.append(
                {
                    "seed": seed,
                    "steps": [full["results"]["stopped"]["step"], cheap["results"]["stopped"]["step"]],
                    "wall_s": [round(wall(run["results"]), 1) for run in (full, cheap)],
                    "share_every_point_full": share(full["results"]),
                    "share_default": share(cheap["results"]),
                    "wall_ratio": round(wall(cheap["results"]) / wall(full["results"]), 3),
                    "timings_every_point_full_s": full["results"]["timings_s"],
                    "timings_default_s": cheap["results"]["timings_s"],
                    "full_points_default": cheap["results"]["points"]["full"],
                    "values_at_levels_equal": values[0] == values[1] if same else None,
                }
            )
    worst = max(row[limited] for row in rows)
    return {
        "setup": setup,
        "default_run": rows,
        "default_run_evaluation_share": max(row["share_default"] for row in rows),
        "default_run_limited": limited,
        "default_run_limit": limit,
        "default_run_within_limit": worst <= limit,
        "default_run_values_at_levels_equal": all(row["values_at_levels_equal"] is not False for row in rows),
    }

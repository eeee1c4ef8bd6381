"""The benchmark suite: `python -m perf` (or `python perf/run.py`).

Every figure is the median of repeated measurements, and every target is a ratio taken side by side in
one process, so that it holds on a noisy machine. CPU by default, CUDA (bf16) when a GPU is present.
Writes one JSON file (--out) and prints a table per benchmark.

    python -m perf                                # the whole suite (under 15 min on 2 CPU cores)
    python -m perf --only optimizer attribution
    python -m perf --only attribution --attribution-setup smollm2_tofu   # SmolLM2-135M on TOFU forget01
    python -m perf --only attribution --attribution-setup smollm2_tofu --layouts-only layerwise/gauss_legendre/4
    python -m perf --profile smoke                # every benchmark at a tiny size (the tests run this)
    python -m perf --only utilisation             # on a GPU: the step's MFU at OLMo-1B size, attribution tokens/s
    python -m perf --only evaluation              # evaluation against a plain generate loop and the step; its share
                                                  # of a run at the default and with every point full (3 seeds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from perf import attribution, evaluation, memory, optimizer, overhead, scaling, utilisation  # noqa: E402
from perf.loop import synthetic_batches  # noqa: E402
from perf.common import device, olmo  # noqa: E402

PROFILES = {
    "full": {
        "optimizer": {"size": "olmo-77m", "repeats": 9},
        "overhead": {"size": "medium", "steps": 12},
        "memory": {"size": "large"},
        "evaluation": {},
        "scaling": {},
        # OLMo-1B size on a GPU; on a CPU (no peak to compare with) a small config's throughput only
        "utilisation": (
            {} if torch.cuda.is_available() else {"size": "medium", "length": 128, "repeats": 3, "attribution_rows": 2}
        ),
    },
    "smoke": {
        "optimizer": {"size": "tiny", "repeats": 2},
        "overhead": {"size": "tiny", "steps": 4, "warmup": 1},
        "memory": {"size": "tiny"},
        "evaluation": {"repeats": 1, "whole_run": False, "smoke": True},
        "scaling": {"sizes": ("tiny",), "forget_rows": (2,), "m": 2, "repeats": 1},
        "utilisation": {"size": "tiny", "rows": 2, "length": 16, "repeats": 1, "attribution_rows": 2},
    },
}


# Per setup: the configurations, the converged reference, and every how-many-th forget row the agreement
# study uses. SmolLM2's layer-wise reference costs 30 layers x nodes passes (about 3 s per node and layer
# for 10 rows on 2 CPU cores), so it is taken at 16 Gauss-Legendre nodes on every 4th row (10 rows; on the
# default target 16 nodes already agree with 64, see the README); the fastest configuration that agrees is
# then timed on the whole forget set.
ATTRIBUTION = {
    "default": {"configs": attribution.CONFIGS, "reference": ("layerwise", "gauss_legendre", 64), "every": 1},
    "smollm2_tofu": {
        "configs": [
            ("layerwise", "gauss_legendre", 4),
            ("joint", "gauss_legendre", 4),
            ("joint", "gauss_legendre", 8),
            ("joint", "gauss_legendre", 16),
            ("joint", "gauss_legendre", 32),
            ("first_order", "riemann", 1),
        ],
        "reference": ("layerwise", "gauss_legendre", 16),
        "every": 4,
    },
}


def parse_configs(text: str) -> list[tuple[str, str, int]]:
    """ "layerwise/gauss_legendre/3,joint/riemann/20" -> [(mode, rule, m), ...]"""
    configs = []
    for item in text.split(","):
        mode, rule, m = item.strip().split("/")
        configs.append((mode, rule, int(m)))
    return configs


def run_attribution(profile: str, setup: str, configs: list | None = None) -> dict:
    if profile == "smoke":  # a random tiny model and random answers: no target to prepare
        model = olmo("tiny").float()
        batch = synthetic_batches(model.config.vocab_size, 1, rows=3, length=12, answer=3)[0]["forget"]
        forget = [
            {"input_ids": ids.tolist(), "labels": labels.tolist()}
            for ids, labels in zip(batch["input_ids"], batch["labels"])
        ]
        tokenizer = argparse.Namespace(pad_token_id=0, eos_token_id=None)
        result = attribution.run(
            model,
            tokenizer,
            forget,
            configs=[("joint", "gauss_legendre", 2), ("first_order", "riemann", 1)],
            reference=("layerwise", "gauss_legendre", 4),
            completeness_samples=4,
        )
        return {**result, "layouts": [attribution.layouts(model, tokenizer, forget, "layerwise", "gauss_legendre", 4)]}
    from perf.targets import trained_target

    model, tokenizer, forget = trained_target(setup)
    plan = ATTRIBUTION[setup]
    result = {
        "setup": setup,
        **attribution.run(model, tokenizer, forget[:: plan["every"]], configs or plan["configs"], plan["reference"]),
    }
    if plan["every"] == 1:  # the two copy layouts side by side, at the default target's agreeing configuration
        result["layouts"] = [attribution.layouts(model, tokenizer, forget, "layerwise", "gauss_legendre", 8)]
    elif result["fastest_with_jaccard_0.95"]:
        mode, rule, m = result["fastest_with_jaccard_0.95"].split("/")
        # the target: the agreeing configuration on the whole forget set, in both layouts
        result["fastest_on_whole_forget_set"] = [
            attribution.layouts(model, tokenizer, forget, mode, "riemann" if rule == "-" else rule, int(m))
        ]
    return result


def run_layouts(setup: str, config: tuple[str, str, int]) -> dict:
    """Only the two layouts of one configuration on the setup's whole forget set (`--layouts-only`)."""
    from perf.targets import trained_target

    model, tokenizer, forget = trained_target(setup)
    return {"setup": setup, "layouts": [attribution.layouts(model, tokenizer, forget, *config)]}


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device().type,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device().type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def show(name: str, result: dict) -> None:
    print(f"\n## {name} ({result.pop('_seconds')} s)")
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            print(table(value))
        elif isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            print(table([{"": k, **v} for k, v in value.items()]))
        else:
            print(f"- {key}: {value}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["optimizer", "attribution", "overhead", "memory", "evaluation", "scaling", "utilisation"],
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--attribution-setup", default="default", choices=["default", "smollm2_tofu"])
    parser.add_argument(
        "--evaluation-setup",
        default="default",
        choices=["default", "smollm2_tofu"],
        help="the whole run whose evaluation share is measured (smollm2_tofu: three SmolLM2 runs, over an hour)",
    )
    parser.add_argument(
        "--attribution-configs",
        type=parse_configs,
        default=None,
        help='mode/rule/m,... instead of the setup\'s list, e.g. "layerwise/gauss_legendre/3"',
    )
    parser.add_argument(
        "--layouts-only",
        type=lambda text: parse_configs(text)[0],
        default=None,
        metavar="MODE/RULE/M",
        help="attribution: only the two copy layouts of this configuration on the setup's whole forget set",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/perf/results.json"))
    args = parser.parse_args(argv)
    settings = PROFILES[args.profile]
    suite = {
        "optimizer": lambda: optimizer.run(**settings["optimizer"]),
        "attribution": lambda: (
            run_layouts(args.attribution_setup, args.layouts_only)
            if args.layouts_only
            else run_attribution(args.profile, args.attribution_setup, args.attribution_configs)
        ),
        "overhead": lambda: overhead.run(**settings["overhead"]),
        "memory": lambda: memory.run(**settings["memory"]),
        "evaluation": lambda: evaluation.run(**settings["evaluation"], setup=args.evaluation_setup),
        "scaling": lambda: scaling.run(**settings["scaling"]),
        "utilisation": lambda: utilisation.run(**settings["utilisation"]),
    }
    results = {"machine": machine(), "profile": args.profile}
    start = time.perf_counter()
    for name in args.only or suite:
        began = time.perf_counter()
        results[name] = suite[name]()
        results[name]["_seconds"] = round(time.perf_counter() - began, 1)
        show(name, dict(results[name]))
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['total_seconds']} s in all; written to {args.out}")
    return results


if __name__ == "__main__":
    main()

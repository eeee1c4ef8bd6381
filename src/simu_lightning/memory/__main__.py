"""python -m simu_lightning.memory [group=option ...] [key=value ...] [--json] [--gpu-gb 80] [--length N]
[--critical-share 0.1]: the memory plan per GPU of the run that `python run.py` with the same overrides would
start, composed over conf/ as run.py composes it, against a GPU of --gpu-gb GiB (precision and activation
checkpointing "auto" resolve for that GPU). A bad override or setting is one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[3] / "conf"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simu_lightning.memory",
        description="What an unlearning run holds per GPU: weights, gradients, optimiser state, activations.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as run.py takes them (model=olmo1b ...)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (byte counts as integers)")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="the GPU planned for, in GiB (default 80)")
    parser.add_argument("--length", type=int, default=None, help="tokens per row (default: model.max_length)")
    parser.add_argument("--critical-share", type=float, default=0.1, help="share of critical neurons (default 0.1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from simu_lightning.memory import GiB, check_fits, longest_length, plan_memory
    from simu_lightning.pipeline.building import composed, memory_setup
    from simu_lightning.utils.errors import SimuError

    args = parse(sys.argv[1:] if argv is None else argv)
    device_bytes = round(args.gpu_gb * GiB)
    try:
        if args.gpu_gb <= 0:
            raise SimuError(f"--gpu-gb={args.gpu_gb:g} must be positive")
        setup = memory_setup(composed(CONF, args.overrides))
        plan = plan_memory(setup, length=args.length, device_bytes=device_bytes, critical_share=args.critical_share)
        if args.json:
            print(json.dumps({**plan.to_dict(), "device_bytes": device_bytes, "fits": plan.fits(device_bytes)}))
            return 0
        print("\n".join(plan.lines(device_bytes)))
        fitting = longest_length(plan, device_bytes)
        print(f"  longest rows that fit: {fitting} tokens" if fitting else "  no row length fits")
        try:
            check_fits(plan, device_bytes, where=f"a {args.gpu_gb:g} GiB GPU")
        except SimuError as err:
            print(f"  {err}")
    except SimuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

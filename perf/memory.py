"""Peak memory of one unlearning step for fo, so and simu on the same model: each method in its own
process; on a CPU the resident-set high-water mark (VmHWM), reset once the model and batches are built
(Linux: `5 > /proc/self/clear_refs`), so that the figure is the step's own; CUDA max-allocated on a GPU.
SIMU runs twice: with its compact optimiser state (the masked down projections' m and h for the critical
columns only) and with the full-size state it had before; for each, the down projections' state held.

    python -m perf.memory METHOD SIZE   # one measurement, printed as JSON (what run() calls)
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

from perf.common import device, olmo
from perf.loop import plain_step, prepare, synthetic_batches, to
from simu_lightning.models.architecture import architecture_of, down_projections


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10  # kB
    raise RuntimeError(f"/proc/self/status has no {field} (the CPU memory benchmark needs Linux)")


def _reset_peak() -> float:
    """Start a new peak here; returns the memory in use now (MB)."""
    gc.collect()
    if device().type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    if device().type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mb("VmHWM")


def measure(method: str, size: str, critical_fraction: float = 0.1) -> dict:
    model = olmo(size).train()
    batches = [to(b, device()) for b in synthetic_batches(model.config.vocab_size, 2)]
    before = _reset_peak()
    optimizer = prepare(model, method, critical_fraction)
    for step, batch in enumerate(batches):  # the second step runs with every state tensor allocated
        plain_step(model, optimizer, batch, step=step)
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    result = {
        "model_mb": round(before, 1),
        "peak_mb": round(_peak_mb(), 1),
        "step_mb": round(_peak_mb() - before, 1),
        "optimizer_state_mb": round(state / 2**20, 2),
    }
    if method.startswith("simu"):
        downs = [proj.weight for proj in down_projections(model, architecture_of(model)).values()]
        held = sum(
            t.numel() * t.element_size()
            for w in downs
            for t in optimizer.state[w].values()
            if isinstance(t, torch.Tensor) and t.dim() > 0
        )
        result["down_proj_state_mb"] = round(held / 2**20, 4)  # momentum + Hessian as the optimiser holds them
    return result


def run(size: str = "large") -> dict:
    results = {}
    for method in ("fo", "so", "simu_full_state", "simu"):
        out = subprocess.run(
            [sys.executable, "-m", "perf.memory", method, size],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        if out.returncode:
            raise RuntimeError(f"memory benchmark for {method} failed: {out.stderr.strip().splitlines()[-1]}")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    lowest = min(results, key=lambda m: results[m]["step_mb"])
    return {
        "model": size,
        "device": device().type,
        "per_method": results,
        "lowest": lowest,
        "simu_step_mb_vs_so": _ratio(results["simu"]["step_mb"], results["so"]["step_mb"]),
        "simu_step_mb_vs_fo": _ratio(results["simu"]["step_mb"], results["fo"]["step_mb"]),
        "simu_down_proj_state_compact_vs_full": _ratio(
            results["simu"]["down_proj_state_mb"], results["simu_full_state"]["down_proj_state_mb"]
        ),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None  # a tiny model's step may not raise the peak at all


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))

"""How much of the hardware the unlearning step and the attribution use: the step's model FLOP
utilisation (MFU) on an OLMo-1B-sized config with random weights, per method, and the attribution's answer
tokens per second. Meant for a GPU (bf16; `python -m perf --only utilisation`, well under 10 minutes on
one); on a CPU it reports throughput and leaves MFU out (no meaningful peak).

Model FLOPs per trained token follow the PaLM appendix: 6 N (forward and backward over the N non-embedding
parameters) + 12 L d T (attention scores and values over a T-token context). A GradDiff step runs the
forget and the retain batch; Sophia's GNB Hessian estimate, taken at every step here, runs them once more
(sampled labels), so SO and SIMU count twice the tokens. SIMU's frozen parameters still carry activation
gradients, so its step is counted like the others: MFU then says how well the masked step uses the FLOPs
a full step would need."""

from __future__ import annotations

import torch

from perf.common import SIZES, device, median_seconds, olmo, sync
from perf.loop import plain_step, prepare, synthetic_batches, to
from simu_lightning.attribution.integrated_gradients import prediction_samples
from simu_lightning.attribution.scores import attribute
from simu_lightning.models.architecture import architecture_of, down_projections
from simu_lightning.optim import Sophia

# Dense bf16 peaks (tensor cores, no sparsity), by a part of the name torch.cuda.get_device_name() gives. One
# chip comes in forms with different clocks and power: "NVIDIA H100 80GB HBM3" is the SXM form (989),
# "NVIDIA H100 PCIe" 756, "NVIDIA H100 NVL" 835; the lookup tries the longest key first, so "H100 PCIe" wins
# over "H100", "L40S" over "L40" over "L4", "A100" over "A10".
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "L4": 121.0,
}


def peak_for(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name`: its most specific (longest) matching key's."""
    return next((PEAK_BF16_TFLOPS[key] for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True) if key in name), None)


def peak_tflops() -> float | None:
    if device().type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name())


def flops_per_token(size: str, context: int) -> float:
    hidden, layers, _, d_ff, _ = SIZES[size]
    non_embedding = layers * (4 * hidden * hidden + 3 * hidden * d_ff)  # attention q, k, v, o; SwiGLU MLP
    return 6 * non_embedding + 12 * layers * hidden * context


def method_step(size: str, method: str, rows: int, length: int, repeats: int) -> dict:
    model = olmo(size)
    optimizer = prepare(model, method)
    batch = to(synthetic_batches(model.config.vocab_size, 1, rows=rows, length=length)[0], device())
    seconds = median_seconds(lambda: plain_step(model, optimizer, batch), repeats)
    passes = 2 if isinstance(optimizer, Sophia) else 1  # the GNB estimate runs both batches again
    tokens = 2 * rows * length  # forget and retain
    achieved = passes * tokens * flops_per_token(size, length) / seconds / 1e12
    peak = peak_tflops()
    return {
        "method": method,
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds),
        "model_tflops_per_s": round(achieved, 2),
        "mfu": round(achieved / peak, 3) if peak else None,
    }


def step_utilisation(size: str, rows: int, length: int, repeats: int) -> list[dict]:
    out = []
    for method in ("fo", "so", "simu"):
        out.append(method_step(size, method, rows, length, repeats))
        print(f"utilisation: {out[-1]}", flush=True)  # in the log as it comes (a time-boxed run may be cut short)
        if device().type == "cuda":
            torch.cuda.empty_cache()  # the previous method's model and state are gone
    return out


def attribution_throughput(size: str, rows: int, length: int, answer: int, m: int) -> dict:
    model = olmo(size)
    batch = synthetic_batches(model.config.vocab_size, 1, rows=rows, length=length, answer=answer)[0]["forget"]
    forget = [{"input_ids": i.tolist(), "labels": lab.tolist()} for i, lab in zip(batch["input_ids"], batch["labels"])]
    samples = prediction_samples(forget)
    projs = down_projections(model, architecture_of(model))
    sync()
    seconds = median_seconds(lambda: attribute(model, projs, samples, m, 0, 512, "gauss_legendre", "layerwise"), 1, 0)
    return {
        "config": f"layerwise/gauss_legendre/{m}",
        "answer_tokens": len(samples),
        "seconds": round(seconds, 2),
        "answer_tokens_per_s": round(len(samples) / seconds, 2),
    }


def run(size: str = "olmo-1b", rows: int = 8, length: int = 512, repeats: int = 5, attribution_rows: int = 8) -> dict:
    return {
        "size": size,
        "device": device().type,
        "peak_bf16_tflops": peak_tflops(),
        "step": step_utilisation(size, rows, length, repeats),
        "attribution": attribution_throughput(size, attribution_rows, 128, 32, 4),
    }

"""The memory plan's activations (simu_lightning.memory) against a measured step: the peak one real
unlearning step reaches above what the process holds before it (weights, optimiser state, the batch; the
last step's gradients freed), configs one after the other in a fresh process. The plan's total adds the
gradients to the activations: a first-order step runs its forward while the last step's gradients are
still held (UnlearningModule zeroes them just before the backward), a second-order step frees them first.

The model is randomly initialised from the config the planner reads (no download), the batches have the
plan's rows at its length (one row shorter, so that a padding mask exists as in real batches), every
position labelled (the plan's upper bound for the GNB pass), and the step is the LightningModule's
(`module_step`: the GNB estimate for Sophia, then the loss, each in its own function as the
LightningModule runs them, so that the estimate's logits are gone before the loss pass). A first step
allocates the optimiser state; the peak of the second is measured as perf/memory.py does: on a CPU the
resident-set high-water mark, reset once the model, the batch and the state are there (glibc's malloc
then gives every block of 128 KiB or more back when it is freed: MALLOC_MMAP_THRESHOLD_, so that memory
freed by the first step and reused by the second does not hide the second's peak); on a GPU CUDA's max
allocated.

    python -m perf.memory_plan                       # SmolLM2-135M-sized, 4 + 4 rows x 256 tokens, fp32
    python -m perf.memory_plan --table               # the README's table: planned GiB per GPU (no measurement)
    python -m perf.memory_plan --measure '<json>'    # measurements in this process, as JSON (what compare() runs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ["model=smollm2_135m", "data.batch_size=4", "data.retain_per_forget=1"]


def composed(overrides: list[str]):
    """The config run.py composes for `overrides` (without Hydra's runtime: the planner reads no paths)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def hf_model(cfg):
    """A randomly initialised model of the architecture the planner reads for `cfg` (float32)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from simu_lightning.pipeline.building import architecture_values

    values = dict(architecture_values(cfg.model))
    config = AutoConfig.for_model(values.pop("model_type"), **values, pad_token_id=0, bos_token_id=None)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def batch(vocab: int, rows: int, length: int, offset: int, generator: torch.Generator) -> dict:
    """`rows` rows of random tokens, the last one shorter (a padding mask), every position labelled."""
    from simu_lightning.data.formatting import collate

    examples = []
    for i in range(rows):
        ids = torch.randint(2, vocab, (length if i < rows - 1 or rows == 1 else length - 7,), generator=generator)
        examples.append({"input_ids": ids.tolist(), "labels": ids.tolist()})
    part = collate(examples, pad_token_id=0)
    part["index"] = torch.arange(rows) + offset
    return part


def masked(model, method, share: float) -> None:
    """The method's trainable parameters, and (SIMU) the first `critical_count` neurons of every down
    projection as its critical ones."""
    from simu_lightning.memory import critical_count
    from simu_lightning.models.architecture import architecture_of, down_projections

    arch = architecture_of(model)
    trainable = method.trainable_parameter_names(model, arch)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    optimizer = method.optimizer([p for p in model.parameters() if p.requires_grad])
    if method.needs_attribution:
        masks = {}
        for proj in down_projections(model, arch).values():
            neurons = proj.weight.shape[arch.neuron_dim]
            mask = torch.zeros(neurons, dtype=torch.bool)
            mask[: critical_count(neurons, share)] = True
            shape = [1, 1]
            shape[arch.neuron_dim] = -1
            masks[proj.weight] = mask.view(shape).to(proj.weight.device)
        optimizer.set_masks(masks)
    return optimizer


def hessian_estimate(model, optimizer, batch: dict, step: int, seed: int = 0) -> int:
    """UnlearningModule.estimate_hessian on one process: the GNB loss on sampled labels, one backward, h."""
    from simu_lightning.optim.gnb import sampled_label_loss
    from simu_lightning.unlearning.module import label_uniforms

    optimizer.zero_grad()
    parts = []
    for split_id, part in enumerate((batch["forget"], batch["retain"])):
        logits = model(
            input_ids=part["input_ids"], attention_mask=part["attention_mask"], position_ids=part["position_ids"]
        ).logits
        uniforms = label_uniforms(part["index"], seed, step, split_id, part["input_ids"].shape[1] - 1, logits.device)
        parts.append(sampled_label_loss(logits, part["labels"], uniforms))
    tokens = int(sum(count for _, count in parts))
    (sum(ce * count for ce, count in parts) / max(tokens, 1)).backward()
    optimizer.update_hessian()
    optimizer.zero_grad()
    return tokens


def module_step(model, optimizer, batch: dict, loss, step: int) -> None:
    """UnlearningModule.unlearning_step on one process: the GNB estimate (Sophia), the loss, the step."""
    from simu_lightning.unlearning.losses import Forward

    kwargs = {"bs": hessian_estimate(model, optimizer, batch, step)} if hasattr(optimizer, "update_hessian") else {}
    value, _ = loss(Forward(model, batch))
    optimizer.zero_grad()
    value.backward()
    optimizer.step(**kwargs)


def measure(overrides: list[str], length: int, share: float = 0.1) -> dict:
    """Planned against measured for one config, in this process (see `compare`)."""
    import gc

    from hydra.utils import instantiate

    from perf.common import device
    from perf.loop import to
    from perf.memory import _peak_mb, _reset_peak
    from simu_lightning.memory import plan_memory
    from simu_lightning.pipeline.building import memory_setup

    cfg = composed([*overrides, "trainer.precision=32-true"])
    where = device()
    plan = plan_memory(memory_setup(cfg), length=length, critical_share=share, device=where.type)
    model = hf_model(cfg).to(where)
    if plan.settings.activation_checkpointing:  # as distributed.parallelize turns it on
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method, loss = instantiate(cfg.method), instantiate(cfg.loss)
    generator = torch.Generator().manual_seed(0)
    vocab, rows = model.config.vocab_size, plan.settings
    step = to(
        {
            "forget": batch(vocab, rows.forget_rows, length, 0, generator),
            "retain": batch(vocab, rows.retain_rows, length, rows.forget_rows, generator),
        },
        where,
    )
    optimizer = masked(model, method, share)
    module_step(model, optimizer, step, loss, step=0)  # allocates the optimiser state
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    before = _reset_peak()
    module_step(model, optimizer, step, loss, step=1)
    measured = round((_peak_mb() - before) * 2**20)
    return {
        "overrides": overrides,
        "length": length,
        "device": where.type,
        "planned_activations": plan.activations,
        "planned_gradients": plan.gradients,
        "measured": measured,
        "ratio": round(measured / plan.activations, 3),
        "passes": plan.to_dict()["passes"],
    }


def compare(runs: list[dict], share: float = 0.1) -> list[dict]:
    """`measure` for each of `runs` ({overrides, length}) in one fresh process, one after the other (each
    model, batch and optimiser freed before the next is built)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),  # a fixed threshold: freed blocks leave the resident set
    }
    args = json.dumps({"runs": runs, "share": share})
    out = subprocess.run(
        [sys.executable, "-m", "perf.memory_plan", "--measure", args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if out.returncode:
        raise RuntimeError(f"memory plan measurement failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


TABLE_MODELS = {"OLMo-1B": ["model=olmo1b", "benchmark=lume"], "Llama-2-7B": ["model=llama2_7b"]}


def gpu_table(length: int = 512) -> list[str]:
    """The README's table: GiB per GPU as planned, bf16-mixed, `length`-token rows, data.batch_size=32,
    activation checkpointing off / on, one GPU and FSDP2 (bf16 gathers) over 2 and 8."""
    from simu_lightning.memory import plan_memory
    from simu_lightning.pipeline.building import memory_setup

    lines = ["| model | method | 1 GPU | 2 GPUs (FSDP2) | 8 GPUs (FSDP2) |", "|---|---|---|---|---|"]
    for model, chosen in TABLE_MODELS.items():
        for method in ("fo", "so", "simu"):
            cells = []
            for devices in (1, 2, 8):
                sharded = ["trainer=fsdp", f"trainer.devices={devices}", "parallel.mixed_precision=bf16"]
                base = [*chosen, f"method={method}", "trainer.precision=bf16-mixed", "data.batch_size=32"]
                totals = [
                    plan_memory(
                        memory_setup(
                            composed(
                                [*base, *(sharded if devices > 1 else []), f"parallel.activation_checkpointing={c}"]
                            )
                        ),
                        length=length,
                        device="cuda",
                    ).total
                    / 2**30
                    for c in ("false", "true")
                ]
                cells.append(" / ".join(f"{t:.1f}" for t in totals))
            lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", help="JSON {runs: [{overrides, length}], share}: measured here, printed as JSON")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--table", action="store_true", help="print the README's table of planned GiB per GPU")
    args = parser.parse_args(argv)
    if args.table:
        print("\n".join(gpu_table()))
        return
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps([measure(**run, share=spec.get("share", 0.1)) for run in spec["runs"]]))
        return
    variants = {
        "fo": ["method=fo"],
        "so": ["method=so"],
        "simu": ["method=simu"],
        "simu, checkpointed": ["method=simu", "parallel.activation_checkpointing=true"],
    }
    runs = [{"overrides": [*SMOLLM2, *extra], "length": args.length} for extra in variants.values()]
    print(f"SmolLM2-135M-sized, random init, fp32, 4 + 4 rows x {args.length} tokens, on {compare_device()}")
    print(f"{'method':<20}{'planned MiB':>13}{'measured MiB':>14}{'measured / planned':>20}{'+ gradients MiB':>17}")
    for name, result in zip(variants, compare(runs)):
        planned, measured = result["planned_activations"] / 2**20, result["measured"] / 2**20
        gradients = result["planned_gradients"] / 2**20
        print(f"{name:<20}{planned:>13.1f}{measured:>14.1f}{result['ratio']:>20.3f}{planned + gradients:>17.1f}")


def compare_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu (VmHWM)"


if __name__ == "__main__":
    main()

"""Run with 2 processes (torchrun): greedy generation from an FSDP2-sharded model all-gathers every layer
for every new token. An evaluation keeps the layers gathered from their first forward pass to its end: each
layer is gathered once per evaluation, its figures are those of the same model unsharded, and afterwards
the layers are sharded again (they reshard after each forward, as training needs)."""

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard import _fsdp_param_group

from simu_lightning.data import synthetic
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.distributed import close_process_group, exit_if_group_closed, parallelize
from simu_lightning.evaluation import Evaluator, qa
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.models import tiny
from simu_lightning.models.loading import load_pretrained

NEW_TOKENS = 6


def gathers_during(model, fn) -> tuple[int, object]:
    """How many all-gathers FSDP issues while `fn` runs, from a model sharded throughout, and what `fn`
    returned."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    real, count = _fsdp_param_group.foreach_all_gather, [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    _fsdp_param_group.foreach_all_gather = counted
    try:
        result = fn()
    finally:
        _fsdp_param_group.foreach_all_gather = real
    return count[0], result


def main(folder: Path):
    dist.init_process_group("gloo")
    benchmark = dataclasses.replace(
        synthetic.load(num_authors=2, forget_fraction=0.5, holdout_fraction=0.5, seed=0), suite=qa.evaluate
    )
    if dist.get_rank() == 0:
        texts = [r[c] for s in benchmark.splits.values() for r in s for c in ("question", "answer")]
        tiny.create(folder, texts, vocab_size=300, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64)
    dist.barrier()
    whole, tokenizer = load_pretrained(folder)
    model, _ = load_pretrained(folder)
    parallelize(model, list(model.model.layers), init_device_mesh("cpu", (dist.get_world_size(),)))
    layers = len(model.model.layers)
    prompt = torch.tensor([[3, 5, 7, 9]])

    def generate():
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)

    plain, _ = gathers_during(model, generate)
    # a forward per new token; the root's own parameters (embeddings, final norm, head) stay gathered anyway
    assert plain == layers * NEW_TOKENS + 1, plain

    evaluator = Evaluator(
        tokenizer, PromptFormat(), benchmark, EvaluationSettings(max_length=64, max_new_tokens=8, batch_size=4)
    )
    once, sharded = gathers_during(model, lambda: evaluator(model, "after"))
    assert once == layers + 1, f"{once} all-gathers in one evaluation, not one per layer ({layers + 1})"
    reference = evaluator(whole, "after")
    for split, values in reference.summary.items():
        for metric, value in values.items():
            assert abs(sharded.summary[split][metric] - value) < 1e-5, (split, metric)
    again, _ = gathers_during(model, lambda: (model(prompt), model(prompt)))
    assert again == 2 * layers + 1, again  # the layers reshard after every forward again
    close_process_group()
    print(f"gathered once per evaluation: a {NEW_TOKENS}-token generation {plain} all-gathers, an evaluation {once}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "model")
    exit_if_group_closed()

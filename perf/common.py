"""What every benchmark shares: the device, model configs by size, and timing by the median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers import OlmoConfig, OlmoForCausalLM


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype() -> torch.dtype:
    """bf16 on a GPU (how such models train there), fp32 on a CPU."""
    return torch.bfloat16 if device().type == "cuda" else torch.float32


def sync() -> None:
    if device().type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` calls, after `warmup` calls (compilation, caches)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# OLMo-architecture configs (the laptop model's and OLMo-1B's family): name -> (hidden, layers, heads, d_ff, vocab)
SIZES = {
    "tiny": (32, 2, 2, 64, 256),  # the smoke test's
    "small": (128, 2, 4, 512, 4096),
    "medium": (256, 4, 4, 1024, 8192),
    "large": (384, 6, 6, 1536, 16384),
    "olmo-77m": (512, 6, 8, 2048, 50304),  # >= 50M parameters, OLMo's vocabulary: the optimiser target
    "olmo-1b": (2048, 16, 16, 8192, 50304),
}


def olmo(size: str, seed: int = 0) -> OlmoForCausalLM:
    hidden, layers, heads, d_ff, vocab = SIZES[size]
    torch.manual_seed(seed)
    config = OlmoConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=d_ff,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
    )
    return OlmoForCausalLM(config).to(device=device(), dtype=dtype())


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

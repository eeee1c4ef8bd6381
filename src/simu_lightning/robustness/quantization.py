"""Weight quantisation as an attack: does rounding the unlearned weights bring the forgotten answers back?

Zhang et al. (ICLR 2025, arXiv 2410.16454) find that unlearning with a small learning rate moves the
weights less than one quantisation step, so the quantised unlearned model answers like the quantised
target. The attack quantises every linear layer's weight of a copy of the model and dequantises it
again (the model then computes with exactly the values a quantised deployment would hold), leaving
embeddings, norms and the output head in full precision, as weight-only quantisers do.

Schemes:
- `rtn8`, `rtn4`: symmetric round-to-nearest per output channel (one scale per weight row, absmax /
  (2^(b-1) - 1)), through torch's own fake-quantisation op; runs on every device.
- `nf4`: bitsandbytes' 4-bit NormalFloat (QLoRA's format: blocks of 64 values, absmax-scaled, rounded
  to the 16 NF4 levels); recent bitsandbytes (0.50 here) quantises on the CPU as well as on CUDA.
  Without bitsandbytes the scheme is skipped with a line saying so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from simu_lightning.errors import SimuError

log = logging.getLogger(__name__)

NF4_BLOCK = 64  # QLoRA's block size
SKIPPED_MODULES = ("lm_head",)  # weight-only quantisers keep the output head in full precision


def rtn_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` rounded to `bits`-bit integers with one symmetric scale per output channel (row),
    returned dequantised in the weight's dtype."""
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    zero_point = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -levels - 1, levels).to(weight.dtype)


def nf4(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in bitsandbytes' NF4 (blocks of 64), returned dequantised in the weight's dtype."""
    import bitsandbytes.functional as bnb

    packed, state = bnb.quantize_4bit(weight.detach().float().contiguous(), blocksize=NF4_BLOCK, quant_type="nf4")
    return bnb.dequantize_4bit(packed, state).to(weight.dtype)


def nf4_available() -> bool:
    try:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU notice about optional kernels
        import bitsandbytes.functional  # noqa: F401
    except Exception:  # an import that fails for want of a GPU library raises more than ImportError
        return False
    return True


SCHEMES = {"rtn8": lambda w: rtn_per_channel(w, 8), "rtn4": lambda w: rtn_per_channel(w, 4), "nf4": nf4}


def quantized_linear_weights(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith(SKIPPED_MODULES):
            yield name, module


@torch.no_grad()
def quantized_copy(model: nn.Module, scheme: str) -> nn.Module:
    """A copy of `model` whose linear weights went through `scheme`; `model` itself is not touched."""
    quantize = SCHEMES[scheme]
    quantized = copy.deepcopy(model)
    for _, module in quantized_linear_weights(quantized):
        module.weight.copy_(quantize(module.weight))
    return quantized


@dataclass
class Quantization:
    """The quantisation attacks (`robustness.quantization.schemes`), each evaluated on every split."""

    schemes: tuple[str, ...] = ("rtn8", "rtn4", "nf4")

    def __post_init__(self):
        unknown = [s for s in self.schemes if s not in SCHEMES]
        if unknown:
            raise SimuError(
                f"robustness.quantization.schemes: unknown {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(SCHEMES)})"
            )

    def run(self, attack) -> None:
        for scheme in self.schemes:
            if scheme == "nf4" and not nf4_available():
                log.warning("robustness: nf4 skipped, bitsandbytes is not installed (pip install bitsandbytes)")
                continue
            attack.evaluate(scheme, quantized_copy(attack.model, scheme), attack.benchmark)

"""Weight quantisation as an attack: does rounding the unlearned weights bring the forgotten answers back?

Zhang et al. (ICLR 2025, arXiv 2410.16454) find that unlearning with a small learning rate moves the
weights less than one quantisation step, so the quantised unlearned model answers like the quantised
target. The attack quantises every projection weight of a copy of the model (`nn.Linear`, and GPT-2's
`Conv1D`, whose weight is stored input x output) and dequantises it again (the model then computes
with exactly the values a quantised deployment would hold), leaving embeddings, norms and the output
head in full precision, as weight-only quantisers do.

Schemes, each on the weight as out x in (a Conv1D weight is transposed first, as bitsandbytes and
the GPTQ/AWQ kernels hold it), and which setting of the paper each stands for:
- `rtn8`: symmetric 8-bit round-to-nearest per output channel (absmax / 127 per row): the weight
  rounding of bitsandbytes' 8-bit loading (`load_in_8bit`, LLM.int8()'s row-wise absmax int8), without
  its outlier columns kept in 16 bits. Through torch's own fake-quantisation op, on every device.
- `rtn4`: the same at 4 bits, one scale per output row: coarser than any deployed 4-bit scheme.
- `rtn4_g128`: 4 bits, symmetric, one scale per 128 inputs of a row: how GPTQ and AWQ store weights
  (group size 128), without their error-correcting rounding order; the paper's GPTQ/AWQ setting.
- `fp4`: bitsandbytes' 4-bit float in blocks of 64: what `load_in_4bit=True` uses by default
  (BitsAndBytesConfig's bnb_4bit_quant_type is "fp4" in transformers 5.24), the paper's 4-bit setting.
- `nf4`: bitsandbytes' 4-bit NormalFloat in blocks of 64 (QLoRA's format, `bnb_4bit_quant_type="nf4"`).
bitsandbytes (0.50 here) quantises on the CPU as well as on CUDA; without it the two bitsandbytes
schemes are skipped with a line saying so.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from simu_lightning.utils.errors import SimuError
from simu_lightning.robustness.worst_case import worst_scheme

log = logging.getLogger(__name__)

BNB_BLOCK = 64  # bitsandbytes' 4-bit block size (QLoRA's, and Params4bit's default)
GROUP = 128  # GPTQ's and AWQ's group size
SKIPPED_MODULES = ("lm_head",)  # weight-only quantisers keep the output head in full precision


def rtn_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` (out x in) rounded to `bits`-bit integers with one symmetric scale per output channel
    (row), returned dequantised in the weight's dtype."""
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    zero_point = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, -levels - 1, levels).to(weight.dtype)


def rtn_grouped(weight: torch.Tensor, bits: int, group: int = GROUP) -> torch.Tensor:
    """`weight` (out x in) rounded to `bits`-bit integers with one symmetric scale per `group`
    consecutive inputs of each row (a last, shorter group where `in` is not a multiple)."""
    rows, columns = weight.shape
    padded = torch.nn.functional.pad(weight.detach().float(), (0, -columns % group))
    grouped = rtn_per_channel(padded.reshape(-1, group), bits)  # zero padding moves no scale
    return grouped.reshape(rows, -1)[:, :columns].to(weight.dtype)


def bnb_4bit(weight: torch.Tensor, quant_type: str) -> torch.Tensor:
    """`weight` in bitsandbytes' 4-bit `quant_type` (blocks of 64), returned dequantised in its dtype."""
    import bitsandbytes.functional as bnb

    packed, state = bnb.quantize_4bit(weight.detach().float().contiguous(), blocksize=BNB_BLOCK, quant_type=quant_type)
    return bnb.dequantize_4bit(packed, state).to(weight.dtype)


def nf4(weight: torch.Tensor) -> torch.Tensor:
    return bnb_4bit(weight, "nf4")


def fp4(weight: torch.Tensor) -> torch.Tensor:
    return bnb_4bit(weight, "fp4")


def bitsandbytes_available() -> bool:
    try:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU notice about optional kernels
        import bitsandbytes.functional  # noqa: F401
    except Exception:  # an import that fails for want of a GPU library raises more than ImportError
        return False
    return True


SCHEMES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rtn8": lambda w: rtn_per_channel(w, 8),
    "rtn4": lambda w: rtn_per_channel(w, 4),
    "rtn4_g128": lambda w: rtn_grouped(w, 4),
    "fp4": fp4,
    "nf4": nf4,
}
BITSANDBYTES_SCHEMES = ("fp4", "nf4")


def projections(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The weights a weight-only quantiser rounds: every `nn.Linear` and `Conv1D` but the output head."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and not name.endswith(SKIPPED_MODULES):
            yield name, module


def quantized_weight(module: nn.Module, quantize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The module's weight through `quantize`, applied to it as out x in (Conv1D stores in x out)."""
    if isinstance(module, Conv1D):
        return quantize(module.weight.t()).t()
    return quantize(module.weight)


@torch.no_grad()
def quantized_copy(model: nn.Module, scheme: str) -> nn.Module:
    """A copy of `model` whose projection weights went through `scheme`; `model` itself is not touched.
    Refused when the scheme changed no weight: an attack that quantised nothing would report that
    quantisation brings nothing back."""
    quantize = SCHEMES[scheme]
    quantized = copy.deepcopy(model)
    found = changed = 0
    for _, module in projections(quantized):
        found += 1
        new = quantized_weight(module, quantize)
        changed += not torch.equal(new, module.weight)
        module.weight.copy_(new)
    if not changed:
        raise SimuError(
            f"robustness.families.quantization: {scheme} changed no weight of this {type(model).__name__} "
            f"({found} nn.Linear / Conv1D projections found outside the output head)"
        )
    return quantized


@dataclass
class Quantization:
    """The quantisation attacks (`robustness.families.quantization.schemes`), each evaluated on every split."""

    schemes: tuple[str, ...] = ("rtn8", "rtn4", "rtn4_g128", "fp4", "nf4")
    # the worst scheme (`quantization_worst`): the largest recovery of forget `metric` among the schemes that
    # keep retain `metric` within `utility_margin` of the unlearned model's (worst_case.py, the same rule)
    metric: str = "rougeL_recall"
    utility_margin: float = 0.05

    def __post_init__(self):
        unknown = [s for s in self.schemes if s not in SCHEMES]
        if unknown:
            raise SimuError(
                f"robustness.families.quantization.schemes: unknown {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(SCHEMES)})"
            )

    needs_retain_model = False

    def before(self, context, retain_model=None) -> None:
        """Nothing: quantising the target says nothing about what unlearning did."""

    def after(self, context, found=None) -> None:
        self.run(context)

    def run(self, context) -> None:
        for scheme in self.schemes:
            if scheme in BITSANDBYTES_SCHEMES and not bitsandbytes_available():
                log.warning("robustness: %s skipped, bitsandbytes is not installed (pip install bitsandbytes)", scheme)
                continue
            context.evaluate(scheme, quantized_copy(context.model, scheme), context.benchmark)
        ran = [scheme for scheme in self.schemes if scheme in context.results]
        if ran and (worst := worst_scheme(context, ran, self.metric, self.utility_margin)) is not None:
            context.results["quantization_worst"] = worst

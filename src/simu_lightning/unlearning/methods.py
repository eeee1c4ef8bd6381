"""An unlearning method = which parameters may change, with which optimiser, under which mask.

- `fo`   (FO-GradDiff): AdamW on all parameters.
- `so`   (SO-GradDiff): Sophia on all parameters.
- `simu` (SIMU): Sophia on the attention projections and the MLP down projections only; inside the
  down projections, only the critical neurons' columns (from the attribution) may change.
- `simu_adamw`: SIMU's parameters and mask with (masked) AdamW: the localisation without Sophia.
The loss (GradDiff, GA, NPO) is chosen separately, so SIMU-NPO is `method=simu loss=npo`.

`trainable` picks the parameters that may change: `all`, SIMU's `attention_and_down_proj`, or, as
controls that separate the two parts of SIMU's choice, `down_proj` (the down projections alone) and
`attention` (the attention projections alone; no down projection changes, so no mask is needed).
`attention_heads_and_down_proj` localises the attention too: q/k/v/o are masked to the critical heads
(attributed like the neurons, models/heads.py), the down projections to the critical neurons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from simu_lightning.utils.errors import SimuError
from simu_lightning.models.architecture import Architecture, attention_projections, down_projections

HEADS = "attention_heads_and_down_proj"
TRAINABLE = ("all", "attention_and_down_proj", "down_proj", "attention", HEADS)


@dataclass
class Method:
    name: str
    optimizer: Callable  # params -> torch.optim.Optimizer (a Hydra `_partial_`)
    trainable: str = "all"
    critical_neuron_mask: bool = False
    hessian_interval: int = 1  # k: refresh the GNB Hessian estimate every k steps

    def __post_init__(self):
        if self.trainable not in TRAINABLE:
            raise SimuError(f"method.trainable={self.trainable!r} must be one of {', '.join(TRAINABLE)}")
        if self.trainable == HEADS and not self.critical_neuron_mask:
            raise SimuError(
                f"method.trainable={HEADS} masks the attention to its critical heads: it needs a masked method "
                f"(method=simu or simu_adamw), not method={self.name}"
            )
        if self.hessian_interval < 1:
            raise SimuError(f"method.hessian_interval must be >= 1, got {self.hessian_interval}")
        lr = getattr(self.optimizer, "keywords", {}).get("lr")  # a partial's settings, checked now, not at fit
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise SimuError(f"method.optimizer.lr must be a positive number, got {lr!r}")

    @property
    def needs_attribution(self) -> bool:
        """The critical neurons are needed when a masked down projection is among the trained parameters."""
        return self.critical_neuron_mask and self.trainable != "attention"

    @property
    def critical_head_mask(self) -> bool:
        """Whether q/k/v/o are masked to the critical attention heads (which attribution then selects too)."""
        return self.trainable == HEADS

    def trainable_parameter_names(self, model: nn.Module, arch: Architecture) -> set[str]:
        """Every parameter, or the attention projections' and the down projections'. Under a critical-neuron
        mask a down projection trains its weight only: its bias (GPT-2's `c_proj.bias`, GPT-NeoX's
        `dense_4h_to_h.bias`) is added after the neurons are summed and belongs to no single neuron, so
        the mask could not confine it; it stays frozen. Under a head mask o_proj's bias stays frozen for
        the same reason (q/k/v biases belong to one head each and train with it)."""
        if self.trainable == "all":
            return {name for name, _ in model.named_parameters()}
        names = set()
        if self.trainable in ("attention_and_down_proj", "attention", HEADS):
            names |= {
                f"{module}.{name}"
                for module, proj in attention_projections(model, arch).items()
                for name, _ in proj.named_parameters()
                if not (self.critical_head_mask and module.endswith(f".{arch.o_proj}") and name != "weight")
            }
        if self.trainable in ("attention_and_down_proj", "down_proj", HEADS):
            for module, proj in down_projections(model, arch).items():
                names |= {
                    f"{module}.{name}"
                    for name, _ in proj.named_parameters()
                    if name == "weight" or not self.critical_neuron_mask
                }
        return names

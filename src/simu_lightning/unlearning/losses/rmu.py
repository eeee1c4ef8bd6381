"""RMU, representation misdirection (Li et al. 2024, WMDP, arXiv 2403.03218): at one layer, push the forget
answers' activations towards a fixed random direction u scaled by `steering`, and hold the retain answers'
activations to the frozen target's:
loss = mse(h(forget), steering * u) + retain_weight * mse(h(retain), h_ref(retain)),
mse the mean over hidden units, summed over a sequence's answer positions and divided by their number,
averaged over examples (open-unlearning's compute_activation_loss). u is uniform in [0, 1)^d, normalised,
drawn once from `seed`. The layer is `layer` (an index into the model's decoder layers); which parameters
move is the method's choice (open-unlearning's default trains every parameter)."""

from __future__ import annotations

import torch


def activation_loss(activations: torch.Tensor, target: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    squared = (activations.float() - target.float()).square().mean(-1)  # per position
    return ((squared * scored).sum(-1) / scored.sum(-1).clamp(min=1)).mean()


class RMU:
    needs_frozen_target = True

    def __init__(self, layer: int = 2, steering: float = 20.0, retain_weight: float = 1.0, seed: int = 0):
        self.capture_layer, self.steering, self.retain_weight, self.seed = layer, steering, retain_weight, seed
        self._direction: torch.Tensor | None = None

    def direction(self, hidden: int, like: torch.Tensor) -> torch.Tensor:
        if self._direction is None or self._direction.numel() != hidden:
            u = torch.rand(hidden, generator=torch.Generator().manual_seed(self.seed))
            self._direction = u / u.norm() * self.steering
        return self._direction.to(device=like.device, dtype=like.dtype)

    def __call__(self, forward):
        # at the answer tokens' positions (open-unlearning's mask: labels != -100)
        forget = forward.activations("forget")
        forget_scored = (forward.labels("forget") != -100).float()
        misdirect = activation_loss(forget, self.direction(forget.shape[-1], forget).expand_as(forget), forget_scored)
        retain_scored = (forward.labels("retain") != -100).float()
        hold = activation_loss(forward.activations("retain"), forward.activations("retain", frozen=True), retain_scored)
        return misdirect + self.retain_weight * hold, {"misdirect": misdirect, "hold": hold}

"""Optimisers for unlearning, in plain PyTorch."""

from simu_lightning.optim.gnb import sample_labels, sampled_label_loss
from simu_lightning.optim.masked_adamw import MaskedAdamW
from simu_lightning.optim.sophia import Sophia

__all__ = ["MaskedAdamW", "Sophia", "sample_labels", "sampled_label_loss"]

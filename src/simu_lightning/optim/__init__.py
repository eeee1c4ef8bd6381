"""Optimisers for unlearning, in plain PyTorch."""
from simu_lightning.optim.gnb import sample_labels, sampled_label_loss
from simu_lightning.optim.sophia import Sophia

__all__ = ["Sophia", "sample_labels", "sampled_label_loss"]

"""Optimisers for unlearning, in plain PyTorch, each under SIMU's masks (the optimiser-order axis: Sophia,
AdamW, SGD, sign-SGD, zeroth order, R-AdaZO, the first/zeroth-order hybrid)."""

from simu_lightning.optim.ada_zo import AdaZO
from simu_lightning.optim.gnb import sample_labels, sampled_label_loss
from simu_lightning.optim.hybrid import FirstZerothHybrid
from simu_lightning.optim.masked_adamw import MaskedAdamW
from simu_lightning.optim.masked_sgd import MaskedSGD
from simu_lightning.optim.sign_sgd import SignSGD
from simu_lightning.optim.sophia import Sophia
from simu_lightning.optim.zeroth_order import ZerothOrder

__all__ = [
    "AdaZO",
    "FirstZerothHybrid",
    "MaskedAdamW",
    "MaskedSGD",
    "SignSGD",
    "Sophia",
    "ZerothOrder",
    "sample_labels",
    "sampled_label_loss",
]

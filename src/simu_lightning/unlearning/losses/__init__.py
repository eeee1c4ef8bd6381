"""Unlearning objectives, one per file. Each is called with the step's `Forward` (forward.py: the model's
and the frozen target's passes on the forget, retain and alternate batches, run once, on demand) and
returns the loss to minimise and the terms worth logging. An objective says what it needs:
`needs_frozen_target` (a frozen copy of the target), `needs_alternates` (the forget questions with a
refusal answer), `capture_layer` (a decoder layer whose output it reads). Which parameters move, and with
which optimiser, is the method's business, so every objective also runs under SIMU's mask and Sophia."""

from simu_lightning.unlearning.losses.forward import Forward
from simu_lightning.unlearning.losses.gradient_ascent import GradientAscent
from simu_lightning.unlearning.losses.graddiff import GradDiff
from simu_lightning.unlearning.losses.idk import IdkDPO, IdkNLL
from simu_lightning.unlearning.losses.npo import NPO
from simu_lightning.unlearning.losses.rmu import RMU
from simu_lightning.unlearning.losses.simnpo import SimNPO
from simu_lightning.unlearning.losses.undial import UNDIAL
from simu_lightning.unlearning.losses.wga import WGA

__all__ = ["Forward", "GradDiff", "GradientAscent", "IdkDPO", "IdkNLL", "NPO", "RMU", "SimNPO", "UNDIAL", "WGA"]

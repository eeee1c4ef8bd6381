"""SIMU stage 1: which down-projection neurons hold the forget set."""

from simu_lightning.attribution.integrated_gradients import prediction_samples
from simu_lightning.attribution.scores import attribute
from simu_lightning.attribution.neurons import critical_neurons

__all__ = ["attribute", "critical_neurons", "prediction_samples"]

"""simu-lightning: Selective Influence Machine Unlearning (SIMU) on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"

"""SIMU stage 2 and its baselines: losses, methods and the LightningModule."""

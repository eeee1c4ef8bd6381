"""What a run does: the conductor (conductor.py), its plan (plan.py), its stages (prepare, baselines,
unlearn, results, outputs; modes for the runs that stop short), and what it leaves behind (manifest,
dashboards, checkpointing). Everything below it is the method and its parts."""

from simu_lightning.pipeline.conductor import run

__all__ = ["run"]

"""What a run does: the conductor (conductor.py), its plan (plan.py), its stages (prepare, baselines,
unlearn, results, outputs; modes for the runs that stop short), and what it leaves behind (manifest,
dashboards, checkpointing). Everything below it is the method and its parts."""


def __getattr__(name: str):
    # `run` on first use: a command that needs one module of the package (the memory command reads its
    # config through building.py) does not import every stage (seconds)
    if name == "run":
        from simu_lightning.pipeline.conductor import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run"]

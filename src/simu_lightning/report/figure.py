"""pareto.png: each run's trajectory in (forget metric, retain metric), its final point marked, one
colour per group."""

from __future__ import annotations

from pathlib import Path

from simu_lightning.report.matched import value_at
from simu_lightning.report.runs import Run
from simu_lightning.report.tables import groups
from simu_lightning.utils.files import atomic


def pareto(runs: list[Run], x: str, y: str, levels: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, (group, members) in enumerate(groups(runs).items()):
        colour = colours(i % 10)
        for j, run in enumerate(members):
            points = [(value_at(p, x), value_at(p, y)) for p in run.curve]
            points = [(a, b) for a, b in points if a is not None and b is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, color=colour, alpha=0.45, linewidth=1.2, label=None)
            ax.scatter(
                [xs[-1]],
                [ys[-1]],
                color=colour,
                s=36,
                edgecolor="black",
                linewidth=0.5,
                zorder=3,
                label=f"{group} (n={len(members)})" if j == 0 else None,
            )
    for level in levels:
        ax.axvline(level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"{x} (lower: more forgotten)")
    ax.set_ylabel(f"{y} (higher: more kept)")
    ax.set_title("Unlearning trajectories: forget vs retain (dot: where each run stopped)")
    ax.invert_xaxis()  # unlearning moves right: from the target (left) to forgotten (right)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # runs without a trajectory (mode=attribute) draw nothing
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

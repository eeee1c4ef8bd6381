"""Continual unlearning requests in the report: after each request k, the retain metric and every request
j <= k's forget metric (request j's rows: the `forget` split of request j's own evaluation, a `request_<j>`
split of the later ones), mean and interval over seeds; as a table per group and as requests.png."""

from __future__ import annotations

from pathlib import Path

from simu_lightning.report.runs import Run
from simu_lightning.report.tables import cell, groups, label, stat_row
from simu_lightning.utils.files import atomic


def name(metric: str) -> str:
    """request_2.exact_match -> request 2 forget EM; other metrics as the report names them."""
    split, _, figure = metric.partition(".")
    if split.startswith("request_"):
        return f"request {split.removeprefix('request_')} {label('forget.' + figure)}"
    return label(metric)


def after_request(entry: dict, j: int, metric: str) -> float | None:
    """Request j's (1-based) forget `metric` in the evaluation after request `entry`."""
    split = "forget" if j == entry["request"] else f"request_{j}"
    return entry["after"].get(split, {}).get(metric)


def requests_rows(runs: list[Run], forget_metric: str, retain_metric: str) -> list[dict]:
    """One row per (group, request k, figure): the retain metric and request j's forget metric after
    request k, for every j <= k."""
    forget = forget_metric.rpartition(".")[2]
    retain_split, _, retain = retain_metric.rpartition(".")
    rows = []
    for group, members in groups(runs).items():
        per_run = [r.results["requests"] for r in members if r.results.get("requests")]
        if not per_run:
            continue
        for k in range(1, max(map(len, per_run)) + 1):
            entries = [requests[k - 1] for requests in per_run if len(requests) >= k]
            figures = {retain_metric: [e["after"].get(retain_split, {}).get(retain) for e in entries]}
            figures |= {
                f"request_{j}.{forget}": [after_request(e, j, forget) for e in entries] for j in range(1, k + 1)
            }
            for metric, values in figures.items():
                values = [v for v in values if v is not None]
                rows.append(
                    stat_row("requests", group, f"after request {k}", metric, len(entries), values, len(values))
                )
    return rows


def requests_markdown(rows: list[dict]) -> list[str]:
    """Per group: a row per request, the retain metric and each request's forget metric after it."""
    lines = []
    index = {(r["group"], r["level"], r["metric"]): r for r in rows}
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        levels, metrics = list(dict.fromkeys(r["level"] for r in mine)), list(dict.fromkeys(r["metric"] for r in mine))
        lines += [
            "",
            f"## Continual requests: {group} ({mine[0]['n']} runs)",
            "",
            "| | " + " | ".join(name(m) for m in metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        lines += [
            f"| {level} | " + " | ".join(cell(index.get((group, level, m))) for m in metrics) + " |" for level in levels
        ]
    if lines:
        lines += [
            "",
            "After request k: the retain metric and request j's forget metric for every j <= k (does what an "
            "earlier request forgot stay forgotten?), mean [95% interval] over seeds; plotted in requests.png.",
        ]
    return lines


def requests_figure(rows: list[dict], path: Path) -> None:
    """requests.png: a panel per group, the request index along x, the retain metric and each request's
    forget metric from the request that made it on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), dpi=120, squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, group in zip(axes[0], names):
        mine = [r for r in rows if r["group"] == group]
        for i, metric in enumerate(dict.fromkeys(r["metric"] for r in mine)):
            points = [(int(r["level"].rsplit(" ", 1)[1]), r["mean"]) for r in mine if r["metric"] == metric]
            xs, ys = zip(*points)
            retain = i == 0
            ax.plot(
                xs,
                ys,
                marker="o",
                color="black" if retain else colours(i % 10),
                linewidth=2 if retain else 1.2,
                linestyle="-" if retain else "--",
                label=name(metric),
            )
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("request")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean over seeds")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

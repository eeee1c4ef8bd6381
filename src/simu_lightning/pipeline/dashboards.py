"""What a run shows on its loggers beyond the scalars Lightning logs: the whole resolved config as
hyperparameters (every logger; CSV writes it to hparams.yaml), and, on loggers that take media (wandb),
the critical neurons as an image and the before/after, generations and robustness tables.

The scalars themselves (unlearn/*, optim/* with Sophia's win and clip rates and Hessian scale,
eval/<split>/<metric> at every evaluation point, attribution/kept/*) are logged where they arise.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on a compute node

import matplotlib.pyplot as plt  # noqa: E402
import numpy  # noqa: E402
import torch  # noqa: E402

from simu_lightning.evaluation.tables import (  # noqa: E402
    ATTACK_METRICS,
    LOCALISATION,
    localisation_rows,
    result_rows,
    robustness_rows,
)

GENERATION_ROWS = 50  # per split in the generations table: enough to read, small enough to upload


def hyperparameters(config: dict) -> dict:
    """The resolved config, with the settings a sweep varies also at the top level (wandb's parallel
    coordinates and scatter plots read them without setup)."""
    method, attribution = config["method"], config["attribution"]
    choices = {
        "method_name": method["name"],
        "loss_name": config["loss"]["_target_"].rsplit(".", 1)[-1],
        "t": attribution["t"],
        "m": attribution["m"],
        "seed": config["seed"],
        "selection": attribution.get("selection"),
        "trainable": method.get("trainable"),
        "lr": (method.get("optimizer") or {}).get("lr"),
    }
    return {**config, **choices}  # (names that do not collide with the config groups)


def log_config(loggers: list, config: dict) -> None:
    params = hyperparameters(config)
    for logger in loggers:
        logger.log_hyperparams(params)


def critical_neurons_figure(scores: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor], t: float | dict):
    """Layers x neurons: each layer's scores over its largest (clipped to [0, 1]), the critical neurons
    (score >= t * max) in colour and the others in grey; the threshold t is the red line on the bar, or,
    chosen per layer (t=auto), written beside each layer."""
    names = list(scores)
    relative = torch.stack(
        [(s / s.max()).clamp(0, 1) if s.max() > 0 else torch.zeros_like(s) for s in scores.values()]
    ).numpy()
    critical = torch.stack([neurons[name] for name in names]).numpy()
    fig, ax = plt.subplots(figsize=(10, min(8.0, 0.3 * len(names) + 1.6)))
    ax.imshow(relative, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    image = ax.imshow(
        numpy.ma.masked_where(~critical, relative),
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    bar = fig.colorbar(image, ax=ax, label="score / layer max (critical in colour)")
    per_layer = isinstance(t, dict)
    if not per_layer:
        bar.ax.axhline(t, color="red", linewidth=2)
    labels = [f"{i}  t={t[n]:.2f}" if per_layer and t.get(n) is not None else str(i) for i, n in enumerate(names)]
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(labels, fontsize=7 if len(names) > 16 else 9)
    ax.set_xlabel("neuron (down-projection input)")
    ax.set_ylabel("layer")
    kept = int(critical.sum())
    where = "t chosen per layer" if per_layer else f"t = {t}"
    ax.set_title(f"critical neurons at {where}: {kept} of {critical.size} ({kept / critical.size:.1%})")
    fig.tight_layout()
    return fig


def log_attribution(
    loggers: list, scores: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor], t: float | dict
) -> None:
    media = [logger for logger in loggers if hasattr(logger, "log_image")]
    if not media or not scores:
        return
    fig = critical_neurons_figure(scores, neurons, t)
    for logger in media:
        logger.log_image(key="attribution/critical_neurons", images=[fig])
    plt.close(fig)


def generations_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Question, answer, and the generations before and after unlearning, per evaluation split."""
    after = {(r["split"], r["index"]): r["generation"] for r in rows if r["stage"] == "after"}
    columns = ["split", "question", "answer", "before", "after"]
    data, per_split = [], {}
    for row in rows:
        if row["stage"] != "before" or "generation" not in row:
            continue
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
        if per_split[row["split"]] <= GENERATION_ROWS:
            data.append(
                [
                    row["split"],
                    row["question"],
                    row["answer"],
                    row["generation"],
                    after.get((row["split"], row["index"])),
                ]
            )
    return columns, data


def log_results(loggers: list, results: dict, rows: list[dict]) -> None:
    for logger in loggers:
        if hasattr(logger, "log_table"):
            logger.log_table(key="results", columns=["split", "metric", "before", "after"], data=result_rows(results))
            logger.log_table(key="generations", columns=(table := generations_table(rows))[0], data=table[1])
            if results.get("robustness"):
                logger.log_table(
                    key="robustness", columns=["attack", "split", *ATTACK_METRICS], data=robustness_rows(results)
                )
            if results.get("localisation"):
                logger.log_table(
                    key="localisation",
                    columns=["layer", "planted", "selected", *LOCALISATION],
                    data=localisation_rows(results),
                )
                overall = results["localisation"]["overall"]  # as scalars too, for a sweep's dashboard
                logger.log_metrics({f"localisation/{k}": v for k, v in overall.items() if v is not None})


def finish(loggers: list) -> None:
    """Close each logger's run now, not at interpreter exit: the jobs of a Hydra sweep share one process,
    and a wandb run left open would take the next job's logs too."""
    for logger in loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()

"""How well a neuron selection finds the planted neurons P (the ground truth of a planted target).

Per layer and over all layers together:
- `precision`, `recall`, `jaccard` of the selected (critical) set C against P: |C & P| / |C|,
  |C & P| / |P|, |C & P| / |C | P|;
- `precision_at_p`: the share of P among the |P| neurons with the highest scores (per layer, that
  layer's |P| top neurons; overall, the |P| top neurons of all layers pooled), which does not depend on
  the threshold t;
- `auroc`: the chance that a planted neuron scores above an unplanted one (ties count one half), from
  the per-neuron scores.
A figure that is undefined (no neuron selected, a layer with no planted neuron) is None.
"""

from __future__ import annotations

import torch

from simu_lightning.evaluation.metrics import rank_auc


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def scores_against(selected: torch.Tensor, scores: torch.Tensor, planted: torch.Tensor) -> dict[str, float | None]:
    """The five figures for one set of neurons (flat tensors of equal length)."""
    selected, planted, scores = selected.flatten().bool(), planted.flatten().bool(), scores.flatten().double()
    hits, size = int((selected & planted).sum()), int(planted.sum())
    top = scores.argsort(descending=True, stable=True)[:size]
    return {
        "precision": _ratio(hits, int(selected.sum())),
        "recall": _ratio(hits, size),
        "jaccard": _ratio(hits, int((selected | planted).sum())),
        "precision_at_p": _ratio(int(planted[top].sum()), size),
        "auroc": rank_auc(scores[~planted].tolist(), scores[planted].tolist()) if 0 < size < len(planted) else None,
    }


def localisation(
    selected: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], planted: dict[str, torch.Tensor]
) -> dict[str, dict]:
    """{"layers": {layer: figures}, "overall": figures} of a selection (per-layer boolean masks) and the
    scores it ranks neurons by, against the planted neurons."""
    if selected.keys() != planted.keys() or scores.keys() != planted.keys():
        raise ValueError("localisation: the selection, its scores and the planted neurons cover different layers")
    layers = list(planted)
    return {
        "layers": {name: scores_against(selected[name], scores[name], planted[name]) for name in layers},
        "overall": scores_against(
            torch.cat([selected[n].flatten() for n in layers]),
            torch.cat([scores[n].flatten() for n in layers]),
            torch.cat([planted[n].flatten() for n in layers]),
        ),
    }

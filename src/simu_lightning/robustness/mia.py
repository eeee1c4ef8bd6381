"""Membership inference on the forget set against held-out rows, as open-unlearning defines it.

Members are the forget rows, non-members rows of the same kind the model never trained on (the
synthetic benchmark's and TOFU's `holdout` authors; LUME's `member` / `nonmember` documents when the
benchmark folder has them). Every attack scores one example from the model's log-probabilities of
its answer tokens (the whole document for LUME), higher meaning "more likely a non-member":
- `loss`: the mean answer-token NLL (Yeom et al. 2018);
- `zlib`: that loss divided by the zlib-compressed length in bytes of the answer text (Carlini et al. 2021);
- `min_k`: minus the mean of the lowest k% token log-probabilities (Shi et al. 2024);
- `min_k++`: the same over z-scores (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t^2 the mean and
  variance of log p under the model's own next-token distribution (Zhang et al. 2024).
min-k and min-k++ leave out the last answer token's prediction (the EOS), as open-unlearning does, and
use k = 0.4 (its TOFU setting). AUC: forget rows labelled 0, held-out rows 1, so 1.0 means the forget
rows are far more likely than unseen ones (still memorised) and a model that never saw them sits near
what a retain-only model gets (about 0.5 when the two sets are alike).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simu_lightning.data.formatting import IGNORE_INDEX, collate, encode_document, encode_example
from simu_lightning.evaluation.metrics import mia_auc
from simu_lightning.utils.memory import with_halving

log = logging.getLogger(__name__)

ATTACKS = ("loss", "zlib", "min_k", "min_k++")
MIN_SIGMA2 = 1e-6  # open-unlearning's floor on the variance in min-k++


@dataclass
class TokenStats:
    """One example's answer tokens: log p(x_t), and mu_t, sigma_t^2 of log p under p(. | x_<t)."""

    log_probs: torch.Tensor
    mu: torch.Tensor
    sigma2: torch.Tensor


def loss_score(stats: TokenStats) -> float:
    return float(-stats.log_probs.mean()) if len(stats.log_probs) else 0.0


def zlib_score(stats: TokenStats, text: str) -> float:
    return loss_score(stats) / len(zlib.compress(text.encode("utf-8")))


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    if len(values) == 0:
        return 0.0
    count = max(1, int(len(values) * k))
    return float(-values.sort().values[:count].mean())


def min_k_score(stats: TokenStats, k: float) -> float:
    return _lowest_mean(stats.log_probs[:-1], k)


def min_k_plus_plus_score(stats: TokenStats, k: float) -> float:
    z = (stats.log_probs - stats.mu) / stats.sigma2.clamp(min=MIN_SIGMA2).sqrt()
    return _lowest_mean(z[:-1], k)


def scores(stats: TokenStats, text: str, k: float) -> dict[str, float]:
    return {
        "loss": loss_score(stats),
        "zlib": zlib_score(stats, text),
        "min_k": min_k_score(stats, k),
        "min_k++": min_k_plus_plus_score(stats, k),
    }


@torch.no_grad()
def batch_token_stats(model, batch: dict[str, torch.Tensor]) -> list[TokenStats]:
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch.get("position_ids")
    ).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    log_p = F.log_softmax(logits.float(), dim=-1)
    target = log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    mu = (p * log_p).sum(-1)
    sigma2 = (p * log_p.square()).sum(-1) - mu.square()
    scored = labels != IGNORE_INDEX
    return [
        TokenStats(target[i][scored[i]].cpu(), mu[i][scored[i]].cpu(), sigma2[i][scored[i]].cpu())
        for i in range(len(labels))
    ]


def token_stats(model, examples: list[dict], pad_token_id: int, batch_size: int) -> list[TokenStats]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(size: int) -> list[TokenStats]:
        out = []
        for start in range(0, len(examples), size):
            batch = collate(examples[start : start + size], pad_token_id)
            out += batch_token_stats(model, {k: v.to(device) for k, v in batch.items()})
        return out

    try:
        return with_halving(run, batch_size, "membership inference (evaluation.batch_size)")
    finally:
        model.train(was_training)


def qa_rows(split) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in split]


@dataclass
class MembershipInference:
    """The four attacks' AUCs, forget against held out (`robustness.families.mia`)."""

    k: float = 0.4
    needs_retain_model = False

    def before(self, context, retain_model=None) -> None:
        """On the target: how recognisable its training rows are to begin with."""
        self.run(context, name="mia_target")

    def after(self, context) -> None:
        self.run(context)

    def sets(self, context) -> tuple[dict[str, list[dict]], bool] | None:
        """({"forget": rows, "holdout": rows}, whether the rows are whole documents), each row a
        {question, answer}; None when the benchmark has no held-out rows."""
        benchmark = context.benchmark
        if "holdout" in benchmark.splits:
            return {"forget": qa_rows(benchmark[benchmark.forget]), "holdout": qa_rows(benchmark["holdout"])}, False
        if "mia_member" in benchmark.splits:
            documents = {"forget": benchmark["mia_member"], "holdout": benchmark["mia_nonmember"]}
            return {
                name: [{"question": "", "answer": d} for d in split["document"]] for name, split in documents.items()
            }, True
        return None

    def per_example(self, context, model, rows: list[dict], documents: bool) -> list[dict]:
        tokenizer, settings = context.tokenizer, context.settings
        if documents:
            encoded = [encode_document(tokenizer, r["answer"], settings.max_length) for r in rows]
        else:
            encoded = [
                encode_example(tokenizer, context.fmt, r["question"], r["answer"], settings.max_length) for r in rows
            ]
        stats = token_stats(model, encoded, tokenizer.pad_token_id, settings.batch_size)
        texts = [
            tokenizer.decode([t for t in e["labels"] if t != IGNORE_INDEX], skip_special_tokens=True) for e in encoded
        ]
        return [{**row, **scores(s, text, self.k)} for row, s, text in zip(rows, stats, texts)]

    def run(self, context, name: str = "mia") -> None:
        found = self.sets(context)
        if found is None:
            log.warning(
                "robustness: membership inference skipped, benchmark %s has no held-out rows "
                "(a holdout split, or LUME's member.jsonl / nonmember.jsonl)",
                context.benchmark.name,
            )
            return
        sets, documents = found
        scored = {split: self.per_example(context, context.model, rows, documents) for split, rows in sets.items()}
        aucs = {
            f"{a}_auc": mia_auc([r[a] for r in scored["forget"]], [r[a] for r in scored["holdout"]]) for a in ATTACKS
        }
        context.record(
            name,
            {"forget_vs_holdout": aucs},
            [
                {"split": split, "stage": name, "index": i, **row}
                for split, rows in scored.items()
                for i, row in enumerate(rows)
            ],
        )
        log.info("robustness: %s: %s", name, ", ".join(f"{a} {v:.3f}" for a, v in aucs.items() if not math.isnan(v)))

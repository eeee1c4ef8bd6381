"""Membership-inference scores of one example, as open-unlearning defines them (the attack stage's
membership inference and the MUSE suite read them).

Members are the forget rows, non-members rows of the same kind the model never trained on (the
synthetic benchmark's and TOFU's `holdout` authors; LUME's `member` / `nonmember` documents when the
benchmark folder has them). Every attack scores one example from the model's log-probabilities of
its answer tokens (the whole document for LUME), higher meaning "more likely a non-member":
- `loss`: the mean answer-token NLL (Yeom et al. 2018);
- `zlib`: that loss divided by the zlib-compressed length in bytes of the answer text (Carlini et al. 2021);
- `min_k`: minus the mean of the lowest k% token log-probabilities (Shi et al. 2024);
- `min_k++`: the same over z-scores (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t^2 the mean and
  variance of log p under the model's own next-token distribution (Zhang et al. 2024).
min-k and min-k++ leave out the last answer token's prediction when it is the EOS, as open-unlearning does
for QA answers (a document, as MUSE and LUME score them, has none: every token counts), and use k = 0.4
(its TOFU setting). AUC: forget rows labelled 0, held-out rows 1, so 1.0 means the forget
rows are far more likely than unseen ones (still memorised) and a model that never saw them sits near
what a retain-only model gets (about 0.5 when the two sets are alike).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simu_lightning.data.formatting import IGNORE_INDEX, collate
from simu_lightning.utils.memory import with_halving
from simu_lightning.utils.phase_progress import advance

log = logging.getLogger(__name__)

ATTACKS = ("loss", "zlib", "min_k", "min_k++")  # from the log-probabilities alone
MIN_SIGMA2 = 1e-6  # open-unlearning's floor on the variance in min-k++


@dataclass
class TokenStats:
    """One example's answer tokens: log p(x_t), and mu_t, sigma_t^2 of log p under p(. | x_<t)."""

    log_probs: torch.Tensor
    mu: torch.Tensor
    sigma2: torch.Tensor
    ends_with_eos: bool = True  # whether the last scored token is the EOS (left out of min-k and min-k++)

    def without_eos(self, values: torch.Tensor) -> torch.Tensor:
        return values[:-1] if self.ends_with_eos else values


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
    return _lowest_mean(stats.without_eos(stats.log_probs), k)


def min_k_plus_plus_score(stats: TokenStats, k: float) -> float:
    z = (stats.log_probs - stats.mu) / stats.sigma2.clamp(min=MIN_SIGMA2).sqrt()
    return _lowest_mean(stats.without_eos(z), k)


def scores(stats: TokenStats, text: str, k: float) -> dict[str, float]:
    return {
        "loss": loss_score(stats),
        "zlib": zlib_score(stats, text),
        "min_k": min_k_score(stats, k),
        "min_k++": min_k_plus_plus_score(stats, k),
    }


def ends_with(labels: torch.Tensor, token_id: int | None) -> list[bool]:
    """Per row of (shifted) labels, whether its last scored token is `token_id` (None: every row does)."""
    if token_id is None:
        return [True] * len(labels)
    ends = []
    for row in labels.tolist():
        scored = [token for token in row if token != IGNORE_INDEX]
        ends.append(bool(scored) and scored[-1] == token_id)
    return ends


@torch.no_grad()
def batch_token_stats(model, batch: dict[str, torch.Tensor], eos_token_id: int | None = None) -> list[TokenStats]:
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
    eos = ends_with(labels, eos_token_id)
    return [
        TokenStats(target[i][scored[i]].cpu(), mu[i][scored[i]].cpu(), sigma2[i][scored[i]].cpu(), eos[i])
        for i in range(len(labels))
    ]


def token_stats(
    model, examples: list[dict], pad_token_id: int, batch_size: int, eos_token_id: int | None = None
) -> list[TokenStats]:
    """Each example's TokenStats; `eos_token_id` tells an answer that ends with the EOS from a document
    that does not (None: every example is taken to end with it)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(size: int) -> list[TokenStats]:
        out = []
        for start in range(0, len(examples), size):
            batch = collate(examples[start : start + size], pad_token_id)
            out += batch_token_stats(model, {k: v.to(device) for k, v in batch.items()}, eos_token_id)
            advance(len(batch["input_ids"]))
        return out

    try:
        return with_halving(run, batch_size, "membership inference (evaluation.batch_size)")
    finally:
        model.train(was_training)


def gradient_norms(
    model, examples: list[dict], pad_token_id: int, p: float = 2.0, eos_token_id: int | None = None
) -> list[float]:
    """GradNorm (Wang et al. 2024; open-unlearning's GradNormAttack): per example, the mean over the
    model's parameter tensors of the p-norm of the gradient of its answer loss (the mean NLL of the answer
    tokens, the EOS left out as in min-k: only where the answer ends with it). Every parameter takes part
    (flags are restored after); the model's own .grad is never written (torch.autograd.grad)."""
    params = list(model.parameters())
    flags = [q.requires_grad for q in params]
    device = params[0].device
    was_training = model.training
    model.eval()  # (open-unlearning trains it: dropout would make the score random)
    norms = []
    try:
        for q in params:
            q.requires_grad_(True)
        for example in examples:
            batch = {k: v.to(device) for k, v in collate([example], pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            positions = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[1]
            if ends_with(labels, eos_token_id)[0]:
                positions = positions[:-1]  # the EOS prediction left out
            if len(positions) == 0:
                norms.append(0.0)
                advance()
                continue
            log_p = F.log_softmax(logits[0, positions].float(), dim=-1).gather(-1, labels[0, positions].unsqueeze(-1))
            grads = torch.autograd.grad(-log_p.mean(), params, allow_unused=True)
            norms.append(float(torch.stack([g.norm(p) for g in grads if g is not None]).mean()))
            advance()
    finally:
        for q, flag in zip(params, flags):
            q.requires_grad_(flag)
        model.train(was_training)
    return norms


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE's PrivLeak in percent, as open-unlearning computes it from an attack's AUC (forget rows labelled
    0): with MUSE's AUC = 1 - ours, (AUC_unlearned - AUC_retain) / AUC_retain * 100. The retain model sits
    at 0, a model that still knows the forget set near -100, one unlearned past it above 0."""
    return ((1 - auc) - (1 - retain_auc)) / ((1 - retain_auc) + 1e-10) * 100

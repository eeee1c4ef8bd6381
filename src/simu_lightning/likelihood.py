"""Answer-token log-likelihood, the quantity the losses, the fine-tuning and the metrics all share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simu_lightning.data.formatting import IGNORE_INDEX
from simu_lightning.utils.errors import SimuError


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(label_t | tokens < t) at every position, and the mask of positions that are scored.

    `labels` are aligned with the inputs (as Hugging Face models take them): the logits at t predict
    the label at t + 1.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits, dim=-1), -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * scored, scored


def argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example: (answer tokens whose teacher-forced argmax prediction equals the label, answer tokens
    counted, the extraction prefix). As open-unlearning's `tokenwise_vocab_logprobs` ("ignore eos
    prediction"), the last labelled token (the EOS) is not counted: a model that has the answer predicts
    its end too, and counting it would lift a short answer's score by up to 1 / (n + 1).

    The extraction prefix k is the fewest counted answer tokens after which the argmax predicts all the
    rest (0: the whole answer; n: not even its last token), what extraction strength reads."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != IGNORE_INDEX
    last = scored & (scored.cumsum(-1) == scored.sum(-1, keepdim=True))
    counted = scored & ~last
    hits = (logits.argmax(-1) == labels) & counted
    rank = counted.cumsum(-1)  # 1-based position among the counted tokens
    prefix = (rank * (counted & ~hits)).amax(-1)  # up to and including the last miss
    return hits.sum(-1), counted.sum(-1), prefix


def answer_log_likelihood(
    model, batch: dict[str, torch.Tensor], with_hits: bool = False, last_positions: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Per example: the sum of answer-token log-probabilities and the number of answer tokens, the EOS
    included (open-unlearning's probability and loss attack take every labelled token); with
    `with_hits`, also the argmax hits, the tokens they are counted over and the extraction prefix (see
    `argmax_hits`).

    `last_positions`: the model computes logits at the last k positions only (Hugging Face's
    `logits_to_keep`), for a left-padded batch whose labelled tokens all lie in them (see
    `labelled_span`); the vocabulary projection of the prompts is the work it saves."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs["position_ids"] = batch.get("position_ids")
    labels = batch["labels"]
    if last_positions is not None:
        inputs["logits_to_keep"] = last_positions
        labels = labels[:, -last_positions:]
    logits = model(**inputs).logits
    logp, scored = token_log_probs(logits, labels)
    if with_hits:
        return logp.sum(-1), scored.sum(-1), *argmax_hits(logits, labels)
    return logp.sum(-1), scored.sum(-1)


def labelled_span(labels: torch.Tensor) -> int:
    """The fewest last positions of a left-padded batch that hold every labelled token and the position
    that predicts the first of them."""
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    return int(labels.shape[1] - labelled[0]) + 1 if len(labelled) else 1


@dataclass
class AnswerNLL:
    """Per-example negative log-likelihood of the answer tokens."""

    total: torch.Tensor  # summed over the answer's tokens (the sequence NLL)
    count: torch.Tensor  # number of answer tokens

    @property
    def mean(self) -> torch.Tensor:
        """Mean over each example's answer tokens.

        Losses average this over examples (rather than over all tokens of the batch), which makes a
        batch's loss the mean of its shards' losses: data-parallel runs see the same objective at any
        device count.
        """
        return self.total / self.count.clamp(min=1)

    def reduced(self, reduction: str = "example") -> torch.Tensor:
        """The batch's NLL (loss.reduction): "example", the mean over examples of each answer's mean, every
        example weighing the same (and a batch's loss the mean of its shards' at any device count);
        "token", the mean over every answer token of the batch, as Hugging Face's `outputs.loss`,
        open-unlearning's and TOFU's code take it (long answers weigh more; the learning rates they publish
        assume it)."""
        if reduction == "example":
            return self.mean.mean()
        return self.total.sum() / self.count.sum().clamp(min=1)


REDUCTIONS = ("example", "token")


def checked_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise SimuError(f"loss.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def answer_nll(model, batch: dict[str, torch.Tensor]) -> AnswerNLL:
    logp_sum, count = answer_log_likelihood(model, batch)
    return AnswerNLL(-logp_sum, count)

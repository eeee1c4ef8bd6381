"""Answer likelihoods that run each prompt once. A truth-ratio row scores five answers to one question (the
answer, its paraphrase, three perturbed answers): scored one sequence each, the question goes through the
model five times. Here the prompts of a batch run once, their keys and values (the KV cache) are copied to
every answer that follows them, and the answers run on top: the same log-probabilities up to float
rounding, for the prompt's tokens once instead of once per answer (on the embedded default: 21 prompt
tokens and about 12 per answer, half the tokens of a truth-ratio row).

The other way to share a prompt, packing a question's answers into one row behind a block-diagonal mask,
was not built: Hugging Face models read a 4D mask differently per attention implementation, while the
cache is what `generate` already relies on in every registered architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simu_lightning.data.formatting import IGNORE_INDEX, collate
from simu_lightning.likelihood import argmax_hits, token_log_probs


@dataclass(frozen=True)
class PromptGroup:
    """The answers that follow one prompt: `answers[i]` is (the example's place, its answer ids, their labels)."""

    prompt: tuple[int, ...]
    answers: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def tokens(self) -> int:
        return len(self.prompt) + sum(len(ids) for _, ids, _ in self.answers)


def prompt_length(example: dict) -> int:
    """The unscored tokens before the first scored one; at least one, since nothing predicts a sequence's
    first token (a document whose every token is labelled has that token as its prompt)."""
    labels = example["labels"]
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return max(1, first)


def prompt_groups(examples: list[dict]) -> list[PromptGroup]:
    """The examples grouped by their prompt's token ids (in order of first appearance)."""
    grouped: dict[tuple[int, ...], list] = {}
    for place, example in enumerate(examples):
        cut = prompt_length(example)
        ids, labels = example["input_ids"], example["labels"]
        grouped.setdefault(tuple(ids[:cut]), []).append((place, tuple(ids[cut:]), tuple(labels[cut:])))
    return [PromptGroup(prompt, tuple(answers)) for prompt, answers in grouped.items()]


def batches(groups: list[PromptGroup], batch_size: int, most: int) -> list[list[PromptGroup]]:
    """`groups` in batches of batch_size // most groups (`most`: the most answers of a group in the whole
    evaluation), so that every process of a sharded evaluation, given as many groups, runs as many batches."""
    per_batch = max(1, batch_size // max(1, most))
    return [groups[start : start + per_batch] for start in range(0, len(groups), per_batch)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def shared_prompt_likelihoods(model, groups: list[PromptGroup], pad_token_id: int) -> list[tuple]:
    """Per answer of `groups` (in their order): (sum of answer-token log-probs, answer tokens, argmax hits,
    the tokens they are counted over, the extraction prefix), as `likelihood.answer_log_likelihood` with
    hits gives them for the whole sequence."""
    device = _device(model)
    prompts = collate([{"input_ids": list(g.prompt)} for g in groups], pad_token_id, padding_side="left")
    prompts = {k: v.to(device) for k, v in prompts.items()}
    out = model(**prompts, use_cache=True, logits_to_keep=1)
    which = torch.tensor([i for i, g in enumerate(groups) for _ in g.answers], device=device)
    cache = out.cache
    cache.reorder_cache(which)  # each answer gets its prompt's keys and values
    answers = [(ids, labels) for g in groups for _, ids, labels in g.answers]
    batch = collate([{"input_ids": list(ids)} for ids, _ in answers], pad_token_id, padding_side="right")
    mask = torch.cat([prompts["attention_mask"][which], batch["attention_mask"].to(device)], dim=1)
    positions = prompts["attention_mask"].sum(-1)[which, None] + torch.arange(
        batch["input_ids"].shape[1], device=device
    )
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=mask, position_ids=positions, cache=cache
    ).logits
    # the prompt's last logits predict the first answer token; each answer position predicts the next
    logits = torch.cat([out.logits[which, -1:].to(logits.dtype), logits], dim=1)
    labels = torch.full((len(answers), logits.shape[1]), IGNORE_INDEX, dtype=torch.long)
    for row, (_, answer_labels) in enumerate(answers):
        labels[row, 1 : 1 + len(answer_labels)] = torch.tensor(answer_labels, dtype=torch.long)
    labels = labels.to(device)
    logp, scored = token_log_probs(logits, labels)
    hits, counted, prefix = argmax_hits(logits, labels)
    return list(zip(*(t.tolist() for t in (logp.sum(-1), scored.sum(-1), hits, counted, prefix))))

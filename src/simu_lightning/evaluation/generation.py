"""Greedy generation and answer likelihoods for evaluation, batched, and spread over processes when
there are several (each takes a share; the results come back in order on every process).

Both sort their inputs by length before batching (and give the results back in the callers' order), so
that a batch pads to its own longest row rather than to the longest row of an unsorted slice. The
likelihoods pad on the left and ask the model for logits at the answer positions only: the prompt's
vocabulary projection and log-softmax, most of a short answer's cost on a large vocabulary, never run."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from simu_lightning.data.formatting import collate
from simu_lightning.distributed import is_distributed, map_sharded
from simu_lightning.evaluation.shared_prompts import PromptGroup, batches, prompt_groups, shared_prompt_likelihoods
from simu_lightning.likelihood import answer_log_likelihood, labelled_span
from simu_lightning.utils.memory import with_halving
from simu_lightning.utils.phase_progress import advance


def _device(model) -> torch.device:
    return next(model.parameters()).device


def by_length(items: list, length: Callable, compute: Callable[[list], list]) -> list:
    """`compute` over `items` sorted by `length`, its results put back in the order of `items`."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    results = [None] * len(items)
    for i, result in zip(order, compute([items[i] for i in order])):
        results[i] = result
    return results


def greedy_generations(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded in batches), decoded without special tokens."""
    return by_length(
        prompts,
        len,
        lambda ordered: map_sharded(
            lambda block: with_halving(
                lambda size: _generate(model, tokenizer, block, max_new_tokens, size),
                batch_size,
                "generation (evaluation.batch_size)",
            ),
            ordered,
        ),
    )


def generations_by_split(
    model, tokenizer, prompts: dict[str, list[list[int]]], max_new_tokens: int, batch_size: int
) -> dict[str, list[str]]:
    """Greedy continuations of every split's prompts in one length-sorted pass: on 2 cores, 80 prompts
    of 4 splits take 24 s this way and 38 s split by split (SmolLM2-135M, 48 new tokens; the same
    texts), since the batches are fuller and each pads to prompts of like length."""
    flat = [prompt for split in prompts.values() for prompt in split]
    texts = greedy_generations(model, tokenizer, flat, max_new_tokens, batch_size)
    result, start = {}, 0
    for name, split in prompts.items():
        result[name], start = texts[start : start + len(split)], start + len(split)
    return result


def answer_log_likelihoods(
    model, examples: list[dict], pad_token_id: int, batch_size: int
) -> list[tuple[float, int, int, int, int]]:
    """(sum of answer-token log-probs, number of answer tokens, argmax hits, tokens the hits are counted
    over: all but the EOS, the extraction prefix) for each encoded example. Examples that share a prompt
    run it once (evaluation/shared_prompts.py), where the model keeps last logits only (every registered
    architecture does); `batch_size` counts answers."""
    if keeps_last_logits(model) and "cache" in inspect.signature(model.forward).parameters:
        return shared_prompt_log_likelihoods(model, examples, pad_token_id, batch_size)
    return by_length(
        examples,
        lambda example: len(example["input_ids"]),
        lambda ordered: map_sharded(
            lambda block: with_halving(
                lambda size: _log_likelihoods(model, block, pad_token_id, size),
                batch_size,
                "answer likelihoods (evaluation.batch_size)",
            ),
            ordered,
        ),
    )


def shared_prompt_log_likelihoods(model, examples: list[dict], pad_token_id: int, batch_size: int) -> list[tuple]:
    # sorted so that like prompts pad together, and like answers too
    groups = sorted(prompt_groups(examples), key=lambda g: (len(g.prompt), g.tokens))
    most = max((len(g.answers) for g in groups), default=1)

    def score(block: list[PromptGroup], size: int) -> list[tuple]:
        per_batch = []
        for part in batches(block, size, most):
            per_batch.append(shared_prompt_likelihoods(model, part, pad_token_id))
            advance(sum(len(g.answers) for g in part))
        return [result for results in per_batch for result in results]

    scored = map_sharded(
        lambda block: _regrouped(
            block,
            with_halving(
                lambda size: _in_eval_mode(model, lambda: score(block, size)),
                batch_size,
                "answer likelihoods (evaluation.batch_size)",
            ),
        ),
        groups,
    )
    results = [None] * len(examples)
    for group, group_results in zip(groups, scored):
        for (place, _, _), result in zip(group.answers, group_results):
            results[place] = result
    return results


def _regrouped(block: list[PromptGroup], flat: list[tuple]) -> list[list[tuple]]:
    """The answers' results of `block`, one list per group (what map_sharded hands back per item)."""
    out, start = [], 0
    for group in block:
        out.append(flat[start : start + len(group.answers)])
        start += len(group.answers)
    return out


def _in_eval_mode(model, compute: Callable[[], list]) -> list:
    was_training = model.training
    model.eval()
    try:
        return compute()
    finally:
        model.train(was_training)


def keeps_last_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (every registered architecture does; a
    remote-code model may not, and gets every position's logits)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = collate(
                [{"input_ids": p} for p in prompts[start : start + batch_size]],
                tokenizer.pad_token_id,
                padding_side="left",
            )
            output = model.generate(
                input_ids=batch["input_ids"].to(_device(model)),
                attention_mask=batch["attention_mask"].to(_device(model)),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                # sharded models: keep stepping until every process is done
                synced_gpus=is_distributed(),
            )
            texts += tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            advance(len(output))
    finally:
        model.train(was_training)
    return texts


@torch.no_grad()
def _log_likelihoods(
    model, examples: list[dict], pad_token_id: int, batch_size: int
) -> list[tuple[float, int, int, int, int]]:
    was_training = model.training
    model.eval()
    results: list[tuple[float, int, int, int, int]] = []
    keep = keeps_last_logits(model)
    try:
        for start in range(0, len(examples), batch_size):
            block = collate(examples[start : start + batch_size], pad_token_id, padding_side="left")
            batch = {k: v.to(_device(model)) for k, v in block.items()}
            span = labelled_span(block["labels"]) if keep else None
            outputs = answer_log_likelihood(model, batch, with_hits=True, last_positions=span)
            results += list(zip(*(t.tolist() for t in outputs)))
            advance(len(block["input_ids"]))
    finally:
        model.train(was_training)
    return results

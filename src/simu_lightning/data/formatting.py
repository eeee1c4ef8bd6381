"""Prompt formatting and answer-only labels: the model is trained and scored on answer tokens alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt. `template` has one `{question}` slot; with `chat=True` the
    tokenizer's own chat template wraps the question instead (instruct models)."""

    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    chat: bool = False

    def prompt(self, question: str, tokenizer=None) -> str:
        if self.chat:
            messages = [{"role": "user", "content": question}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.template.format(question=question)


def encode_prompt(tokenizer, fmt: PromptFormat, question: str) -> list[int]:
    # Chat templates already carry their special tokens; plain templates get the tokenizer's (e.g. BOS).
    return tokenizer(fmt.prompt(question, tokenizer), add_special_tokens=not fmt.chat)["input_ids"]


def encode_example(tokenizer, fmt: PromptFormat, question: str, answer: str, max_length: int) -> dict:
    """Token ids of prompt + answer + EOS, with the prompt's labels set to IGNORE_INDEX.

    The prompt and the answer are tokenised as one text, as a target trained on the joint text saw
    them (open-unlearning does the same): with a sentencepiece tokenizer the answer tokenised on its
    own can start with a different token (a lone "▁" before "▁Paris"). The boundary is the first token
    that reaches past the prompt's characters (from the offsets); a tokenizer without offsets (a slow
    one) falls back to tokenising the two apart. A long answer is cut to fit `max_length`, the prompt
    never is.
    """
    prompt = fmt.prompt(question, tokenizer)
    if not getattr(tokenizer, "is_fast", False):
        prompt_ids = encode_prompt(tokenizer, fmt, question)
        answer_ids = tokenizer(fmt.answer_prefix + answer, add_special_tokens=False)["input_ids"]
    else:
        joint = tokenizer(
            prompt + fmt.answer_prefix + answer, add_special_tokens=not fmt.chat, return_offsets_mapping=True
        )
        ids, offsets = joint["input_ids"], joint["offset_mapping"]
        text = [i for i, (start, end) in enumerate(offsets) if end > start]  # special tokens span nothing
        boundary = next((i for i in text if offsets[i][1] > len(prompt)), len(ids))
        last = text[-1] + 1 if text else len(ids)  # drop special tokens the tokenizer appends (e.g. its own EOS)
        prompt_ids, answer_ids = ids[:boundary], ids[boundary:last]
    answer_ids = (answer_ids + [tokenizer.eos_token_id])[: max(1, max_length - len(prompt_ids))]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def encode_document(tokenizer, text: str, max_length: int) -> dict:
    """A whole document, every token labelled (LUME's membership documents)."""
    ids = tokenizer(text)["input_ids"][:max_length]
    return {"input_ids": ids, "labels": ids}


def document_windows(tokenizer, text: str, max_length: int) -> list[dict]:
    """A document cut into windows of `max_length` tokens, every token labelled: how raw text is
    unlearned or trained on (MUSE; open-unlearning's PretrainingDataset)."""
    ids = tokenizer(text)["input_ids"]
    return [
        {"input_ids": ids[i : i + max_length], "labels": ids[i : i + max_length]}
        for i in range(0, len(ids), max_length)
    ]


def encode_rows(tokenizer, fmt: PromptFormat, rows, max_length: int) -> list[dict]:
    """Rows as a model trains on them: QA rows (question, answer) as prompt + answer with answer-only
    labels, document rows (text) as windows of max_length tokens."""
    rows = list(rows)
    if rows and "text" in rows[0]:
        return [w for row in rows for w in document_windows(tokenizer, row["text"], max_length)]
    return [encode_example(tokenizer, fmt, r["question"], r["answer"], max_length) for r in rows]


def collate(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad `input_ids` (and `labels`, if present) into a batch with an attention mask and explicit
    position ids, so left- and right-padded batches give every real token the same position."""
    ids = [torch.tensor(e["input_ids"], dtype=torch.long) for e in examples]
    batch = {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_token_id, padding_side=padding_side),
        "attention_mask": pad_sequence(
            [torch.ones_like(i) for i in ids], batch_first=True, padding_value=0, padding_side=padding_side
        ),
    }
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    if "labels" in examples[0]:
        # Nothing predicts a sequence's first token: left-padded, a pad position would (a document's
        # every token is labelled), so it is never scored, padded on either side.
        labels = [torch.tensor([IGNORE_INDEX, *e["labels"][1:]], dtype=torch.long) for e in examples]
        batch["labels"] = pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX, padding_side=padding_side)
    return batch

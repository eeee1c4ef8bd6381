"""One unlearning step's forward passes, each run once and only when an objective asks for it: the model
(and the frozen target) on the step's batches, `forget`, `retain`, and `alternate` (the forget questions
with refusal answers, for the objectives that teach one). What an objective reads: logits, the answer
tokens' log-probabilities, the per-example answer NLL, and a layer's output (RMU)."""

from __future__ import annotations

import torch

from simu_lightning.likelihood import AnswerNLL, token_log_probs


class Forward:
    def __init__(self, model, batch: dict, frozen_target=None, capture=None):
        self.model, self.batch, self.frozen_target = model, batch, frozen_target
        self.capture = capture  # (model module, frozen module): whose outputs `activations` returns
        self._logits: dict[tuple[str, bool], torch.Tensor] = {}
        self._captured: dict[tuple[str, bool], torch.Tensor] = {}

    def labels(self, split: str) -> torch.Tensor:
        return self.batch[split]["labels"]

    def logits(self, split: str, frozen: bool = False) -> torch.Tensor:
        """The model's (or, with `frozen`, the frozen target's, without gradients) logits on a batch."""
        if (split, frozen) not in self._logits:
            self._run(split, frozen)
        return self._logits[split, frozen]

    def token_log_probs(self, split: str, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(label_t | tokens < t) at every position (zero where unscored), and the scored positions."""
        return token_log_probs(self.logits(split, frozen), self.labels(split))

    def nll(self, split: str, frozen: bool = False) -> AnswerNLL:
        """Per example: the answer tokens' summed NLL and their count."""
        logp, scored = self.token_log_probs(split, frozen)
        return AnswerNLL(-logp.sum(-1), scored.sum(-1))

    def activations(self, split: str, frozen: bool = False) -> torch.Tensor:
        """The output of the captured layer (batch x positions x hidden) on a batch."""
        if (split, frozen) not in self._captured:
            self._run(split, frozen)
        return self._captured[split, frozen]

    def _run(self, split: str, frozen: bool) -> None:
        model = self.frozen_target if frozen else self.model
        if model is None:
            raise ValueError("this objective needs the frozen target (needs_frozen_target = True)")
        batch = self.batch[split]
        handle = None
        if self.capture is not None:
            module = self.capture[1] if frozen else self.capture[0]
            handle = module.register_forward_hook(
                lambda _, __, output: self._captured.__setitem__(
                    (split, frozen), output[0] if isinstance(output, tuple) else output
                )
            )
        try:
            with torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
                self._logits[split, frozen] = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    position_ids=batch.get("position_ids"),
                ).logits
        finally:
            if handle is not None:
                handle.remove()

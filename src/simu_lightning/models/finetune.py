"""Fine-tuning a base model into a target (or retain) model: answer-only NLL with AdamW."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from simu_lightning.data.formatting import collate, encode_rows
from simu_lightning.likelihood import answer_nll
from simu_lightning.optim.masked_adamw import MaskedAdamW


def answer_loader(tokenizer, fmt, rows: list[dict], max_length: int, batch_size: int, seed: int) -> DataLoader:
    """Shuffled (seeded) batches of `rows`: (question, answer) pairs labelled on the answer tokens, or
    documents cut into windows (formatting.encode_rows)."""
    examples = encode_rows(tokenizer, fmt, rows, max_length)
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id),
    )


class FineTune(L.LightningModule):
    """Answer-only NLL with AdamW and a cosine schedule. With `masks` ({parameter: mask}), only those
    parameters train, and only their entries under the mask (MaskedAdamW: the rest bit-identical);
    every other parameter is frozen (a planted target)."""

    def __init__(self, model, lr: float, weight_decay: float = 0.0, warmup_ratio: float = 0.05, masks=None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.masks = masks
        if masks is not None:
            trained = {id(p) for p in masks}
            for param in model.parameters():
                param.requires_grad_(id(param) in trained)

    def training_step(self, batch, batch_idx):
        loss = answer_nll(self.model, batch).mean.mean()
        self.log("finetune/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        if self.masks is None:
            # torch's AdamW step bit for bit; fp32 masters where the weights are bf16 (optim/master.py)
            optimizer = MaskedAdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = MaskedAdamW(list(self.masks), lr=self.lr, weight_decay=self.weight_decay, masks=self.masks)
        total = self.trainer.estimated_stepping_batches
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

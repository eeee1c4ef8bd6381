"""Real (short) Lightning training runs: what may change changes, and nothing else moves a bit."""

import copy
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch

from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.attribution.settings import AttributionSettings
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.utils.errors import SimuError
from simu_lightning.likelihood import answer_nll
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.optim import Sophia
from simu_lightning.unlearning.losses import NPO, GradDiff
from simu_lightning.unlearning.methods import Method
from simu_lightning.unlearning.module import UnlearningModule

SIMU = Method(
    "simu", partial(Sophia, lr=1e-2, weight_decay=0.1), trainable="attention_and_down_proj", critical_neuron_mask=True
)
SO = Method("so", partial(Sophia, lr=1e-2), trainable="all")
FO = Method("fo", partial(torch.optim.AdamW, lr=1e-2), trainable="all")


def unlearn(model, tokenizer, benchmark, fmt, method, loss=None, steps=3, frozen_target=None):
    L.seed_everything(0, verbose=False)
    module = UnlearningModule(model, method, loss or GradDiff(), architecture_of(model), frozen_target=frozen_target)
    datamodule = UnlearningDataModule(benchmark, tokenizer, fmt, batch_size=2, max_length=64)
    attribution = NeuronAttribution(AttributionSettings(t=0.3, m=4))
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[attribution],
    )
    trainer.fit(module, datamodule)
    return module, attribution


def test_simu_changes_only_critical_columns_and_attention(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    L.seed_everything(0, verbose=False)
    module = UnlearningModule(model, SIMU, GradDiff(), architecture_of(model))
    datamodule = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    attribution = NeuronAttribution(AttributionSettings(t=0.3, m=4))
    L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[attribution],
    ).fit(module, datamodule)

    arch = architecture_of(model)
    downs, attention = down_projections(model, arch), attention_projections(model, arch)
    assert 0 < sum(attribution.kept.values()) < sum(p.weight.shape[1] for p in downs.values())
    for name, param in model.named_parameters():
        module_name = name.rsplit(".", 1)[0]
        if module_name in downs:
            neurons = module.trainer.optimizers[0].masks[param].squeeze(0)
            assert torch.equal(neurons, attribution.neurons[module_name])  # the very neurons attribution chose
            assert torch.equal(param[:, ~neurons], before[name][:, ~neurons]), f"{name}: a non-critical column moved"
            if neurons.any():
                assert not torch.equal(param[:, neurons], before[name][:, neurons])
        elif module_name in attention:
            assert not torch.equal(param, before[name]), f"{name} should have been trained"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen under SIMU but moved"
            assert param.grad is None
    state = module.trainer.optimizers[0].state
    assert all(p.requires_grad for p in state)  # no optimiser state for frozen parameters


@pytest.mark.parametrize("method", [SO, FO], ids=["so", "fo"])
def test_baselines_train_every_parameter(tiny_model, small_benchmark, prompt_format, method):
    model, tokenizer = tiny_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unlearn(model, tokenizer, small_benchmark, prompt_format, method)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(before)  # every parameter tensor, norms and embeddings included


def test_npo_keeps_its_frozen_target_frozen_and_raises_the_forget_nll(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    frozen_target = copy.deepcopy(model)
    frozen = {n: p.detach().clone() for n, p in frozen_target.named_parameters()}
    forget = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    batch = forget.collate(forget.forget)

    def forget_nll():
        with torch.no_grad():
            return answer_nll(model, batch).mean.mean().item()

    before = forget_nll()
    unlearn(model, tokenizer, small_benchmark, prompt_format, FO, NPO(beta=0.1), steps=4, frozen_target=frozen_target)
    assert all(torch.equal(p, frozen[n]) for n, p in frozen_target.named_parameters())
    assert forget_nll() > before


def test_npo_without_a_frozen_target_is_refused(tiny_model):
    model, _ = tiny_model
    with pytest.raises(SimuError, match="frozen copy of the target"):
        UnlearningModule(model, FO, NPO(), architecture_of(model))


def test_masks_need_a_masked_optimiser(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    masked_adamw = Method("simu", partial(torch.optim.AdamW, lr=1e-3), "attention_and_down_proj", True)
    with pytest.raises(SimuError, match="masked optimiser"):
        unlearn(model, tokenizer, small_benchmark, prompt_format, masked_adamw)


class NaNAtStep(GradDiff):
    """GradDiff whose loss turns NaN at a given call (a diverging run)."""

    def __init__(self, at: int):
        super().__init__()
        self.calls, self.at = 0, at

    def __call__(self, forward):
        self.calls += 1
        loss, terms = super().__call__(forward)
        return (loss * float("nan") if self.calls == self.at else loss), terms


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_never_reaches_the_weights(
    tiny_model, small_benchmark, prompt_format
):
    model, tokenizer = tiny_model
    L.seed_everything(0, verbose=False)
    module = UnlearningModule(model, SO, NaNAtStep(at=3), architecture_of(model))
    datamodule = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    trainer = L.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(
        SimuError, match=r"non-finite loss \(nan\) at unlearning step 2 \(epoch 0\); the weights were not updated"
    ):
        trainer.fit(module, datamodule)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(
        torch.isfinite(t).all()
        for s in trainer.optimizers[0].state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )


def test_the_gnb_estimate_is_scaled_by_the_batch_token_count(tiny_model, small_benchmark, prompt_format):
    """After one step, h = (1 - beta2) g^2 with g the gradient of the sampled-label CE summed over every
    answer token of the forget and retain batch and divided by their number, which is Sophia's bs."""
    import torch.nn.functional as F

    model, tokenizer = tiny_model
    start = copy.deepcopy(model)
    seen = {}

    class Keep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["batch"] = batch

    L.seed_everything(0, verbose=False)
    module = UnlearningModule(
        model, Method("so", partial(Sophia, lr=1e-2, betas=(0.9, 0.99)), "all"), GradDiff(), architecture_of(model)
    )
    datamodule = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Keep()],
    ).fit(module, datamodule)

    batch = seen["batch"]
    tokens = sum(int((part["labels"][:, 1:] != -100).sum()) for part in (batch["forget"], batch["retain"]))
    assert module.hessian_tokens == tokens
    total = 0.0
    for split_id, part in enumerate((batch["forget"], batch["retain"])):
        logits = start(
            input_ids=part["input_ids"], attention_mask=part["attention_mask"], position_ids=part["position_ids"]
        ).logits[:, :-1]
        # the documented draws: one generator per (seed, step, split, row), here at step 0
        uniforms = torch.tensor(
            np.stack([np.random.default_rng([0, 0, split_id, row]).random(logits.shape[1]) for row in part["index"]]),
            dtype=torch.float32,
        )
        scored = part["labels"][:, 1:] != -100
        cdf = F.softmax(logits.detach(), -1).cumsum(-1)
        sampled = (cdf < uniforms.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)
        total = total + F.cross_entropy(logits[scored], sampled[scored], reduction="sum")
    (total / tokens).backward()
    state = module.trainer.optimizers[0].state
    for (name, param), (_, reference) in zip(model.named_parameters(), start.named_parameters()):
        torch.testing.assert_close(
            state[param]["hessian"],
            0.01 * reference.grad**2,
            rtol=1e-4,
            atol=1e-12,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def test_the_win_rate_summary_is_the_median_over_the_steps_that_had_one():
    from types import SimpleNamespace

    steps = SimpleNamespace(win_rates=[0.4, float("nan"), 0.1, 0.3, 0.2])  # NaN: no Hessian estimate yet
    summary = UnlearningModule.win_rate_summary(steps)
    assert summary == {"median_win_rate": 0.25, "min_win_rate": 0.1, "max_win_rate": 0.4, "steps": 4}
    assert UnlearningModule.win_rate_summary(SimpleNamespace(win_rates=[])) is None

"""Every objective against a value worked out by hand on a tiny batch, and the step's forward passes."""

import math

import pytest
import torch

from simu_lightning.data.formatting import IGNORE_INDEX
from simu_lightning.likelihood import AnswerNLL, answer_nll, token_log_probs
from simu_lightning.unlearning.losses import (
    NPO,
    RMU,
    UNDIAL,
    WGA,
    Forward,
    GradDiff,
    GradientAscent,
    IdkDPO,
    IdkNLL,
    SimNPO,
)
from simu_lightning.unlearning.losses.rmu import activation_loss
from simu_lightning.utils.errors import SimuError

# per-example means differ from the token means, so the documented averaging (per example, then over
# examples) is pinned: forget means 2, 3 -> 2.5 (token mean 8/3); retain means 0.5, 3 -> 1.75 (token mean 4/3)
FORGET = AnswerNLL(total=torch.tensor([2.0, 6.0]), count=torch.tensor([1, 2]))
RETAIN = AnswerNLL(total=torch.tensor([1.0, 3.0]), count=torch.tensor([2, 1]))


class Given:
    """A step's passes given outright: what each objective reads, without a model."""

    def __init__(self, nll=None, frozen_nll=None, **given):
        self._nll, self._frozen, self.given = nll or {}, frozen_nll or {}, given

    def nll(self, split, frozen=False):
        return (self._frozen if frozen else self._nll)[split]

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.given[name](*args, **kwargs)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_graddiff_is_minus_forget_plus_weighted_retain():
    loss, terms = GradDiff(retain_weight=3.0)(Given({"forget": FORGET, "retain": RETAIN}))
    assert loss.item() == pytest.approx(-2.5 + 3.0 * 1.75)
    assert terms["forget_nll"].item() == pytest.approx(2.5) and terms["retain_nll"].item() == pytest.approx(1.75)


def test_gradient_ascent_ignores_retain():
    loss, _ = GradientAscent()(Given({"forget": FORGET}))
    assert loss.item() == pytest.approx(-2.5)


def test_npo_against_hand_value():
    frozen = AnswerNLL(total=torch.tensor([1.0, 6.0]), count=torch.tensor([1, 2]))
    loss, terms = NPO(beta=0.1, retain_weight=1.0)(Given({"forget": FORGET, "retain": RETAIN}, {"forget": frozen}))
    # log pi/pi_ref = [1 - 2, 6 - 6] = [-1, 0]; -2/beta * mean(log sigmoid(-beta * [-1, 0]))
    npo = -20 * (math.log(sig(0.1)) + math.log(0.5)) / 2
    assert terms["npo"].item() == pytest.approx(npo, rel=1e-6)
    assert loss.item() == pytest.approx(npo + 1.75, rel=1e-6)


def test_simnpo_is_length_normalised_with_a_margin_and_no_reference():
    loss, terms = SimNPO(beta=2.0, gamma=1.0, retain_weight=0.5)(Given({"forget": FORGET, "retain": RETAIN}))
    # mean NLLs 2, 3: -(2/2) * mean(log sigmoid(2*2 - 1), log sigmoid(2*3 - 1)); + 0.5 * 1.75
    simnpo = -(math.log(sig(3)) + math.log(sig(5))) / 2
    assert terms["simnpo"].item() == pytest.approx(simnpo, rel=1e-6)
    assert loss.item() == pytest.approx(simnpo + 0.875, rel=1e-6)
    # open-unlearning's SimNPO weights the forget term (its SimNPO.yaml: 0.125)
    weighted, _ = SimNPO(beta=2.0, gamma=1.0, retain_weight=0.5, forget_weight=0.125)(
        Given({"forget": FORGET, "retain": RETAIN})
    )
    assert weighted.item() == pytest.approx(0.125 * simnpo + 0.875, rel=1e-6)


def test_idk_nll_learns_the_refusal_and_idk_dpo_prefers_it_to_the_answer():
    refusal = AnswerNLL(total=torch.tensor([3.0, 1.0]), count=torch.tensor([3, 1]))
    loss, _ = IdkNLL(refusals=["I don't know."], retain_weight=2.0)(Given({"alternate": refusal, "retain": RETAIN}))
    assert loss.item() == pytest.approx(1.0 + 2.0 * 1.75)  # refusal mean NLLs 1, 1
    frozen = {
        "forget": AnswerNLL(torch.tensor([1.0, 5.0]), torch.tensor([1, 2])),
        "alternate": AnswerNLL(torch.tensor([4.0, 2.0]), torch.tensor([3, 1])),
    }
    nll = {"forget": FORGET, "alternate": refusal, "retain": RETAIN}
    loss, terms = IdkDPO(refusals=["No idea."], beta=0.5, retain_weight=1.0)(Given(nll, frozen))
    # log pi/pi_ref: refusal [4 - 3, 2 - 1] = [1, 1]; answer [1 - 2, 5 - 6] = [-1, -1]; margin 2 each
    dpo = -(2 / 0.5) * math.log(sig(0.5 * 2))
    assert terms["dpo"].item() == pytest.approx(dpo, rel=1e-6) and loss.item() == pytest.approx(dpo + 1.75, rel=1e-6)
    with pytest.raises(SimuError, match="loss.refusals: a list of at least one refusal answer"):
        IdkNLL(refusals=[])


def test_wga_weights_each_forget_token_by_its_probability():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.8, 1.0]]))
    scored = torch.tensor([[True, True], [True, False]])
    given = Given({"retain": RETAIN}, token_log_probs=lambda split, frozen=False: (logp * scored, scored))
    loss, terms = WGA(beta=1.0, retain_weight=0.0)(given)
    # p * nll over the three answer tokens: 0.5 ln 2, 0.25 ln 4, 0.8 ln 1.25; their mean, negated
    expected = -(0.5 * math.log(2) + 0.25 * math.log(4) + 0.8 * math.log(1.25)) / 3
    assert terms["wga"].item() == pytest.approx(expected, rel=1e-6) and loss.item() == pytest.approx(expected, rel=1e-6)


def test_undial_distils_towards_the_frozen_target_with_the_answer_token_lowered():
    # one example: position 0 predicts answer token 1 (scored); position 1 predicts the pad (ignored)
    student = torch.tensor([[[0.0, 1.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    given = Given(logits=lambda split, frozen=False: teacher if frozen else student, labels=lambda split: labels)
    loss, _ = UNDIAL(beta=2.0, retain_weight=0.0)(given)
    # target: softmax([0, 2 - 2, 0]) = uniform 1/3; CE = -(1/3) sum log softmax([0, 1, 0])
    log_z = math.log(2 + math.e)
    expected = -((0 - log_z) + (1 - log_z) + (0 - log_z)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_rmu_misdirects_forget_activations_and_holds_retain_ones():
    activations = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    scored = torch.tensor([[0.0, 1.0]])
    # only position 1: ((3 - 1)^2 + (4 - 0)^2) / 2 = 10, over one scored position
    assert activation_loss(activations, torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]), scored).item() == pytest.approx(10.0)
    rmu = RMU(layer=0, steering=3.0, retain_weight=2.0, seed=0)
    u = torch.rand(2, generator=torch.Generator().manual_seed(0))
    target = u / u.norm() * 3.0
    labels = torch.tensor([[IGNORE_INDEX, 5]])
    held = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    given = Given(
        labels=lambda split: labels,
        activations=lambda split, frozen=False: held if frozen else activations,
    )
    loss, terms = rmu(given)
    misdirect = ((3.0 - target[0]) ** 2 + (4.0 - target[1]) ** 2) / 2
    assert terms["misdirect"].item() == pytest.approx(misdirect.item(), rel=1e-6)
    assert terms["hold"].item() == pytest.approx(0.5) and loss.item() == pytest.approx(misdirect.item() + 1.0, rel=1e-6)


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, **inputs):
        self.calls += 1
        return self.model(**inputs)


def test_the_forward_runs_each_pass_once_and_equals_the_answer_nll(tiny_model, small_benchmark, prompt_format):
    from simu_lightning.data.datamodule import UnlearningDataModule

    model, tokenizer = tiny_model
    data = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    batch = {"forget": data.collate(data.forget[:2])}
    counting = CountingModel(model)
    forward = Forward(counting, batch, frozen_target=None)
    nll = forward.nll("forget")
    logp, scored = forward.token_log_probs("forget")
    assert counting.calls == 1  # one pass serves the NLL and the token log-probabilities
    expected = answer_nll(model, batch["forget"])
    assert torch.equal(nll.total, expected.total) and torch.equal(nll.count, expected.count)
    assert torch.equal(
        logp,
        token_log_probs(
            model(**{k: batch["forget"][k] for k in ("input_ids", "attention_mask", "position_ids")}).logits,
            batch["forget"]["labels"],
        )[0],
    )
    with pytest.raises(ValueError, match="needs the frozen target"):
        forward.nll("forget", frozen=True)
    layer = model.model.layers[1]
    captured = Forward(model, batch, model, capture=(layer, layer)).activations("forget")
    assert captured.shape[:2] == batch["forget"]["input_ids"].shape and captured.shape[-1] == model.config.hidden_size


def test_the_alternate_batch_pairs_each_forget_question_with_one_refusal(tiny_model, small_benchmark, prompt_format):
    from simu_lightning.data.datamodule import UnlearningDataModule

    _, tokenizer = tiny_model
    refusals = ("I don't know.", "I cannot say.")
    data = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, alternates=refusals)
    data.trainer = None
    paired = data.on_before_batch_transfer(data.forget[:2])
    assert set(paired) == {"forget", "retain", "alternate"}
    decoded = [
        tokenizer.decode([t for t in labels.tolist() if t >= 0], skip_special_tokens=True).strip()
        for labels in paired["alternate"]["labels"]
    ]
    assert all(text in refusals for text in decoded)
    assert paired["alternate"]["index"].tolist() == paired["forget"]["index"].tolist()
    again = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, alternates=refusals)
    assert [e["input_ids"] for e in again.alternate] == [e["input_ids"] for e in data.alternate]  # fixed per row


def test_the_nll_terms_average_over_answers_or_over_every_answer_token():
    """loss.reduction: example (each answer's mean NLL, averaged: 2 and 3 -> 2.5) or token (every answer token
    of the batch alike, as Hugging Face's outputs.loss: 11 / 4 = 2.75)."""
    nll = AnswerNLL(total=torch.tensor([2.0, 9.0]), count=torch.tensor([1, 3]))
    assert nll.reduced("example").item() == pytest.approx(2.5) and nll.reduced("token").item() == pytest.approx(2.75)
    given = Given({"forget": nll, "retain": nll})
    assert GradDiff(retain_weight=2.0, reduction="token")(given)[0].item() == pytest.approx(-2.75 + 2 * 2.75)
    assert GradDiff(retain_weight=2.0)(given)[0].item() == pytest.approx(-2.5 + 2 * 2.5)
    with pytest.raises(SimuError, match="^loss.reduction must be one of example, token, got 'sum'"):
        GradDiff(reduction="sum")

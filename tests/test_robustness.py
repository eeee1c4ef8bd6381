"""The attack stage: quantisation, relearning, probes and membership inference, each against values
worked out by hand, and the unlearned model left exactly as it was."""

import copy
import dataclasses
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from scipy.stats import mannwhitneyu

from datasets import Dataset

from simu_lightning.evaluation import EvaluationSettings, Evaluator, lume, qa
from simu_lightning.evaluation.metrics import mia_auc
from simu_lightning.evaluation.tables import mia_rows, robustness_rows, robustness_tables
from simu_lightning.robustness import AttackContext, MembershipInference, Probes, Quantization, Relearning, Robustness
from simu_lightning.data.formatting import IGNORE_INDEX
from simu_lightning.evaluation import membership as mia_scores
from simu_lightning.robustness import mia
from simu_lightning.robustness.quantization import fp4, nf4, quantized_copy, rtn_grouped, rtn_per_channel
from simu_lightning.robustness.relearning import relearning_rows
from simu_lightning.utils.errors import SimuError


def test_round_to_nearest_gives_each_output_channel_its_own_scale():
    weight = torch.tensor([[1.0, -0.4, 0.26, 0.0], [0.1, 0.02, -0.06, 0.07]])
    # 4 bits: 7 levels a side. Row 0: scale 1/7, w/s = 7, -2.8, 1.82, 0 -> 7, -3, 2, 0.
    # Row 1: scale 0.1/7, w/s = 7, 1.4, -4.2, 4.9 -> 7, 1, -4, 5.
    expected4 = torch.tensor([[7, -3, 2, 0], [0.7, 0.1, -0.4, 0.5]]) / 7 * torch.tensor([[1.0], [1.0]])
    expected4[1] = torch.tensor([7, 1, -4, 5]) * (0.1 / 7)
    assert torch.allclose(rtn_per_channel(weight, 4), expected4, atol=1e-7)
    # 8 bits: 127 levels. Row 0: -0.4 * 127 = -50.8 -> -51, 0.26 * 127 = 33.02 -> 33.
    assert torch.allclose(rtn_per_channel(weight, 8)[0], torch.tensor([127, -51, 33, 0]) / 127, atol=1e-7)
    # an all-zero row stays zero (no division by a zero scale)
    assert torch.equal(rtn_per_channel(torch.zeros(2, 3), 4), torch.zeros(2, 3))


def test_grouped_round_to_nearest_gives_each_group_of_inputs_its_own_scale():
    weight = torch.tensor([[1.0, 0.45, -0.2, 0.1, 0.03, -0.06]])
    # groups of 3, 4 bits (7 levels a side). Group 0: scale 1/7, w/s = 7, 3.15, -1.4 -> 7, 3, -1.
    # Group 1: scale 0.1/7, w/s = 7, 2.1, -4.2 -> 7, 2, -4.
    expected = torch.tensor([[7 / 7, 3 / 7, -1 / 7, 0.7 / 7, 0.2 / 7, -0.4 / 7]])
    assert torch.allclose(rtn_grouped(weight, 4, group=3), expected, atol=1e-7)
    # one scale for the whole row would round the second group to 1/7, 0, 0
    assert torch.allclose(rtn_per_channel(weight, 4)[0, 3:], torch.tensor([1 / 7, 0.0, 0.0]), atol=1e-7)
    # a row that is not a multiple of the group: the last group is the 2 inputs left
    assert torch.allclose(rtn_grouped(weight[:, :5], 4, group=3), expected[:, :5], atol=1e-7)


def test_eight_bit_rounding_equals_bitsandbytes_row_wise_int8():
    import bitsandbytes.functional as bnb  # in the test extra: CI fails, not skips, without it

    weight = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    quantized, scales, _ = bnb.int8_vectorwise_quant(weight)
    assert torch.allclose(rtn_per_channel(weight, 8), bnb.int8_vectorwise_dequant(quantized, scales), atol=1e-6)


def test_nf4_rounds_to_the_normal_float_levels_of_each_block():
    import bitsandbytes  # noqa: F401  (in the test extra: CI fails, not skips, without it)

    weight = torch.zeros(1, 64)
    weight[0, :4] = torch.tensor([1.0, 0.5, -0.3, 0.07])
    # absmax 1; nearest NF4 levels (QLoRA, appendix E): 0.5 -> 0.4407 (not 0.5626), -0.3 -> -0.2844,
    # 0.07 -> 0.0796 (not 0)
    expected = torch.tensor([1.0, 0.44070982933044434, -0.28444138169288635, 0.07958029955625534])
    assert torch.allclose(nf4(weight)[0, :4], expected, atol=1e-6)
    assert torch.equal(nf4(weight)[0, 4:], torch.zeros(60))


def test_fp4_rounds_to_bitsandbytes_float_levels_of_each_block():
    import bitsandbytes  # noqa: F401

    weight = torch.zeros(1, 64)
    weight[0, :5] = torch.tensor([1.0, 0.3, 0.6, 0.2, -0.45])
    # bitsandbytes' FP4 magnitudes (its dequantisation table): 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1, times
    # the block's absmax (1): 0.3 -> 1/3, 0.6 -> 2/3, 0.2 -> 1/6, -0.45 -> -1/2
    expected = torch.tensor([1.0, 1 / 3, 2 / 3, 1 / 6, -0.5])
    assert torch.allclose(fp4(weight)[0, :5], expected, atol=1e-6)


def test_a_scheme_that_quantises_nothing_is_refused():
    with pytest.raises(
        SimuError, match=r"^robustness.families.quantization: rtn4 changed no weight of this Sequential \(0 nn"
    ):
        quantized_copy(torch.nn.Sequential(torch.nn.Embedding(4, 2)), "rtn4")


def test_a_quantised_copy_leaves_the_model_and_its_output_head_alone(tiny_model):
    model, _ = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantized_copy(model, "rtn4")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = quantized.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # the linear layers only
    down = after["model.layers.0.mlp.down_proj.weight"]
    assert all(len(row.unique()) <= 16 for row in down)  # 4 bits: at most 16 values per output channel


def test_membership_scores_match_their_definitions_on_a_worked_example():
    # five answer tokens, the last the EOS prediction that min-k and min-k++ leave out
    stats = mia_scores.TokenStats(
        log_probs=torch.tensor([-0.1, -2.0, -0.5, -3.0, -0.2]),
        mu=torch.full((5,), -1.0),
        sigma2=torch.full((5,), 4.0),
    )
    assert mia_scores.loss_score(stats) == pytest.approx((0.1 + 2.0 + 0.5 + 3.0 + 0.2) / 5)
    assert mia_scores.zlib_score(stats, "aaaa") == pytest.approx(1.16 / 12)  # zlib.compress(b"aaaa") is 12 bytes
    # lowest 50% of the first four: -3.0, -2.0
    assert mia_scores.min_k_score(stats, 0.5) == pytest.approx(2.5)
    # k = 0.4 of four tokens keeps int(1.6) = 1: the lowest alone
    assert mia_scores.min_k_score(stats, 0.4) == pytest.approx(3.0)
    # z = (lp + 1) / 2 = 0.45, -0.5, 0.25, -1.0 -> lowest two -1.0, -0.5
    assert mia_scores.min_k_plus_plus_score(stats, 0.5) == pytest.approx(0.75)
    flat = mia_scores.TokenStats(torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.zeros(2))
    assert mia_scores.min_k_plus_plus_score(flat, 0.5) == 0.0  # variance floored, no division by zero
    # members labelled 0: of the four (member, non-member) pairs, three rank the non-member higher
    assert mia_auc([0.1, 0.2], [0.3, 0.15]) == pytest.approx(0.75)


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is p = (1/4, 1/2, 1/4) at every position."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.log(torch.tensor([1.0, 2.0, 1.0])).expand(*input_ids.shape, 3)
        return SimpleNamespace(logits=logits)


def test_min_k_leaves_out_the_last_token_only_where_it_is_the_eos(tiny_model):
    """A QA answer ends with the EOS (its prediction is left out, as open-unlearning does); a document, as
    MUSE and LUME score them, has none: every token counts."""
    from simu_lightning.data.formatting import PromptFormat, encode_document, encode_example

    model, tokenizer = tiny_model
    answer = encode_example(tokenizer, PromptFormat(), "Where was she born?", "In the town of Vel by the sea", 64)
    document = encode_document(tokenizer, "The harbour of Vel opened in 1901 by the sea.", 64)
    qa_stats, document_stats = mia_scores.token_stats(
        model, [answer, document], tokenizer.pad_token_id, 4, tokenizer.eos_token_id
    )
    assert qa_stats.ends_with_eos and not document_stats.ends_with_eos
    for stats, counted in ((qa_stats, qa_stats.log_probs[:-1]), (document_stats, document_stats.log_probs)):
        lowest = sorted(counted.tolist())[: max(1, int(len(counted) * 0.4))]  # the definition, by hand
        assert mia_scores.min_k_score(stats, 0.4) == pytest.approx(-sum(lowest) / len(lowest))


def test_token_statistics_are_the_answer_tokens_log_probs_and_the_distributions_mean_and_variance():
    batch = {
        "input_ids": torch.tensor([[0, 1, 2]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.tensor([[-100, 1, 2]]),
    }
    (stats,) = mia_scores.batch_token_stats(FixedLogits(), batch)
    assert torch.allclose(stats.log_probs, torch.tensor([math.log(0.5), math.log(0.25)]))
    mu = 0.5 * math.log(0.25) + 0.5 * math.log(0.5)
    sigma2 = 0.5 * math.log(0.25) ** 2 + 0.5 * math.log(0.5) ** 2 - mu**2
    assert torch.allclose(stats.mu, torch.tensor([mu, mu])) and torch.allclose(stats.sigma2, torch.tensor([sigma2] * 2))


def cpu_trainer(**overrides) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **overrides,
    )


@pytest.fixture()
def attack(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=16)
    benchmark = dataclasses.replace(small_benchmark, suite=qa.evaluate)  # as conf/benchmark/synthetic.yaml names it
    return AttackContext(model, Evaluator(tokenizer, prompt_format, benchmark, settings), cpu_trainer)


def test_relearning_trains_copies_and_leaves_the_unlearned_model_bit_identical(attack):
    model = attack.model
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)  # as an unlearning method may leave it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    relearning = Relearning(steps=3, lr=1e-2, batch_size=4)
    relearning.run(attack)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert flags == {k: p.requires_grad for k, p in model.named_parameters()}
    # the copy did learn, every parameter of it (the frozen one too)
    relearned = relearning.relearned(attack, attack.benchmark["forget"].to_list()).state_dict()
    assert all(not torch.equal(before[k], relearned[k]) for k in before if k.endswith("proj.weight"))
    forget = attack.benchmark["forget"]
    train, held = relearning_rows(len(forget), 0.25)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(forget)
    assert relearning_rows(len(forget), 0.25) == (train, held)  # the same rows in every run
    # the control: the retain model relearned on the same rows, evaluated on the same held-out rows
    retain_model = copy.deepcopy(model)
    retain_before = {k: v.clone() for k, v in retain_model.state_dict().items()}
    relearning.before(attack, retain_model)
    assert all(torch.equal(retain_before[k], v) for k, v in retain_model.state_dict().items())
    questions = {
        stage: [r["question"] for r in attack.rows if r["stage"] == stage and r["split"] == "forget"]
        for stage in ("relearn_forget", "relearn_forget_retain_model")
    }
    assert questions["relearn_forget"] == questions["relearn_forget_retain_model"] == forget.select(held)["question"]
    results = attack.results
    assert set(results) == {"relearn_forget", "relearn_benign", "relearn_forget_retain_model"}
    assert set(results["relearn_forget"]) >= {"forget", "forget_unattacked"}
    stages = [(r["stage"], r["split"]) for r in attack.rows]
    assert (
        stages.count(("relearn_forget", "forget")) == len(held) == stages.count(("relearn_forget", "forget_unattacked"))
    )
    assert stages.count(("relearn_benign", "forget")) == len(forget)


def test_the_relearning_control_hands_the_random_generators_back_as_it_found_them(attack):
    """The control relearns before unlearning starts: with dropout on (GPT-2: 0.1), what the unlearning
    draws next must be what it would draw without the attack stage."""
    import os
    import random

    import numpy as np

    dropout = torch.nn.Dropout(0.1)
    L.seed_everything(7, verbose=False)
    without = [dropout(torch.ones(64)) for _ in range(3)], random.random(), np.random.rand()
    L.seed_everything(7, verbose=False)
    Relearning(steps=2, lr=1e-2, batch_size=4).before(attack, copy.deepcopy(attack.model))
    assert os.environ["PL_GLOBAL_SEED"] == "7"
    masks, python_draw, numpy_draw = without
    assert all(torch.equal(dropout(torch.ones(64)), mask) for mask in masks)
    assert (random.random(), np.random.rand()) == (python_draw, numpy_draw)


def test_the_attacks_on_the_target_run_on_the_runs_device(attack, monkeypatch):
    """A spy for a GPU: Module.to("fake:0") marks a model as placed; every model the baselines evaluate
    or score (membership inference, the probes) and the retain model the control relearns must be placed."""
    placed, used = set(), []
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if args and args[0] == "fake:0":
            placed.add(id(self))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    real_evaluate, real_stats = AttackContext.evaluate, mia.token_stats
    monkeypatch.setattr(
        AttackContext,
        "evaluate",
        lambda self, name, model, *a, **k: used.append(model) or real_evaluate(self, name, model, *a, **k),
    )
    monkeypatch.setattr(mia, "token_stats", lambda model, *a: used.append(model) or real_stats(model, *a))
    monkeypatch.setattr(Relearning, "before", lambda self, attack, retain_model: used.append(retain_model))
    attack.evaluator = dataclasses.replace(attack.evaluator, device="fake:0")
    retain_model = copy.deepcopy(attack.model)
    families = {"relearning": Relearning(), "probes": Probes(prefixes=("Recall: ",)), "mia": MembershipInference()}
    Robustness(families).before(attack, retain_model)
    assert len(used) >= 4 and retain_model in used
    assert all(id(model) in placed for model in used)


def test_probes_reword_the_questions_and_put_each_prefix_in_front(attack):
    prefixes = ("Recall: ", "Answer truthfully. ")
    Probes(paraphrase=True, prefixes=prefixes).run(attack)
    forget = attack.benchmark["forget"]
    paraphrased = [r for r in attack.rows if r["stage"] == "paraphrase"]
    assert [r["question"] for r in paraphrased] == forget["paraphrased_question"]
    assert [r["answer"] for r in paraphrased] == forget["answer"]
    prefixed = [r for r in attack.rows if r["stage"] == "prefixes"]
    assert len(prefixed) == len(prefixes) * len(forget)
    assert all(r["question"] == r["prefix"] + forget[r["index"] % len(forget)]["question"] for r in prefixed)
    assert attack.results["prefixes"]["forget"]["exact_match"] == pytest.approx(
        sum(r["exact_match"] for r in prefixed) / len(prefixed)
    )


def test_membership_inference_on_the_target_scores_every_forget_and_holdout_row(attack):
    MembershipInference(k=0.4).before(attack)
    aucs = attack.results["mia_target"]["forget_vs_holdout"]
    rows = attack.rows
    forget, holdout = ([r for r in rows if r["split"] == s] for s in ("forget", "holdout"))
    assert len(forget) == len(attack.benchmark["forget"]) and len(holdout) == len(attack.benchmark["holdout"])
    for name in mia_scores.ATTACKS:
        # recomputed from the per-example scores by brute force over every (forget, holdout) pair
        pairs = [(f[name], h[name]) for f in forget for h in holdout]
        wins = sum(1.0 if h > f else 0.5 if h == f else 0.0 for f, h in pairs)
        assert aucs[f"{name}_auc"] == pytest.approx(wins / len(pairs))


def test_an_unknown_quantisation_scheme_is_refused_by_name():
    with pytest.raises(SimuError, match=r"robustness.families.quantization.schemes: unknown 'int3'"):
        Quantization(schemes=("rtn8", "int3"))


def test_the_run_tables_put_each_attack_beside_the_unattacked_model():
    results = {
        "after": {"forget": {"exact_match": 0.1, "rougeL_recall": 0.5}, "retain": {"exact_match": 0.9}},
        "robustness": {
            "rtn4": {"forget": {"exact_match": 0.3, "answer_prob": 0.4}, "scores": {"model_utility": 0.6}},
            "mia": {"forget_vs_holdout": {"loss_auc": 0.9, "zlib_auc": 0.8}},
        },
    }
    assert robustness_rows(results) == [
        ["after", "forget", 0.1, 0.5, None, None, None],
        ["after", "retain", 0.9, None, None, None, None],
        ["rtn4", "forget", 0.3, None, None, None, 0.4],
    ]
    assert mia_rows(results) == [["mia", 0.9, 0.8]]
    assert robustness_tables({"after": results["after"]}) == []  # a run without the stage shows no table


def test_on_lume_membership_inference_scores_whole_documents_as_the_official_attack_does(attack):
    documents = {
        "mia_member": ["Alpha was born in Brill.", "Beta writes poetry."],
        "mia_nonmember": ["Gamma lives in Trask.", "Delta won a prize.", "Epsilon is a tailor."],
    }
    splits = {
        "forget": attack.benchmark["forget"],
        **{k: Dataset.from_dict({"document": v}) for k, v in documents.items()},
    }
    lume_like = dataclasses.replace(attack.benchmark, splits=splits)  # no holdout split
    attack.evaluator = dataclasses.replace(attack.evaluator, benchmark=lume_like)
    MembershipInference().run(attack, retain_rows=None)
    rows = [r for r in attack.rows if r["stage"] == "mia"]
    assert [r["answer"] for r in rows] == documents["mia_member"] + documents["mia_nonmember"]
    # the loss score is the mean NLL of the document's tokens, what LUME's official MIA thresholds
    official = lume.document_nll(attack.model, attack.tokenizer, [r["answer"] for r in rows], attack.settings)
    assert [r["loss"] for r in rows] == pytest.approx(official, rel=1e-5)


class LearnedLogits(torch.nn.Module):
    """A 'model' whose logits are one learned vector at every position."""

    def __init__(self, vocab: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.w.expand(*input_ids.shape, -1))


def test_gradnorm_is_the_mean_gradient_norm_of_the_answer_loss_by_hand():
    model = LearnedLogits().requires_grad_(False)  # a frozen parameter takes part too, then stays frozen
    example = {"input_ids": [1, 1, 1], "labels": [IGNORE_INDEX, 0, 1]}  # answer token 0, then the EOS (1)
    # loss = -log softmax(w)[0] at w = 0: gradient softmax(w) - e_0 = (-1/2, 1/2), norm sqrt(1/2)
    (norm,) = mia_scores.gradient_norms(model, [example], pad_token_id=0)
    assert norm == pytest.approx(math.sqrt(0.5)) and not model.w.requires_grad and model.w.grad is None


class TwoTensorLogits(torch.nn.Module):
    """A 'model' of two parameter tensors of different sizes: logits = bias + table[input token], bias of 4
    entries and table of 4 x 4, seeded. The mean of their gradients' norms, the sum, and the norm of the two
    gradients laid end to end are three different numbers here."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.bias = torch.nn.Parameter(torch.randn(4, generator=generator))
        self.table = torch.nn.Parameter(torch.randn(4, 4, generator=generator))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.bias + self.table[input_ids])


def test_gradnorm_is_the_mean_over_parameter_tensors_of_each_tensors_gradient_norm():
    """GradNorm's definition: the mean over the model's parameter tensors of the p-norm of the gradient of
    the answer loss (the mean NLL of the answer tokens, the EOS left out where the answer ends with it)."""
    model, eos = TwoTensorLogits(), 3
    ends_with_eos = {"input_ids": [2, 1, 0, 2, 3], "labels": [IGNORE_INDEX, IGNORE_INDEX, 0, 2, 3]}
    ends_without = {"input_ids": [1, 2, 0, 1], "labels": [IGNORE_INDEX, 2, 0, 1]}

    def gradients(example, answer_positions):
        """The gradients of the mean NLL of the tokens at `answer_positions`, each predicted at the one before."""
        ids = example["input_ids"]
        logits = model(torch.tensor([ids])).logits[0]
        loss = -torch.stack([logits[t - 1].log_softmax(-1)[ids[t]] for t in answer_positions]).mean()
        return torch.autograd.grad(loss, [model.bias, model.table])

    def p_norm(values, p):
        return float(values.flatten().abs().pow(p).sum().pow(1 / p))

    for p in (2.0, 1.0):
        expected = []
        # the first answer's EOS (position 4) is left out; the second answer ends without it: all three count
        for example, positions in ((ends_with_eos, [2, 3]), (ends_without, [1, 2, 3])):
            norms = [p_norm(g, p) for g in gradients(example, positions)]
            mean = sum(norms) / len(norms)
            assert min(norms) > 0 and norms[0] != pytest.approx(norms[1])  # two tensors, two different norms
            assert mean != pytest.approx(sum(norms))  # not the sum over tensors
            concatenated = p_norm(torch.cat([g.flatten() for g in gradients(example, positions)]), p)
            assert mean != pytest.approx(concatenated)  # nor the norm of every gradient entry together
            expected.append(mean)
        # the second answer's last token is not the EOS: leaving it out would give another value
        dropped = [p_norm(g, p) for g in gradients(ends_without, [1, 2])]
        assert expected[1] != pytest.approx(sum(dropped) / len(dropped))
        norms = mia_scores.gradient_norms(model, [ends_with_eos, ends_without], pad_token_id=0, p=p, eos_token_id=eos)
        assert norms == pytest.approx(expected, rel=1e-6), p
    assert model.bias.grad is None and model.table.grad is None  # (torch.autograd.grad: no .grad written)


def test_privleak_is_musees_relative_auc_gap_in_percent():
    assert mia_scores.privleak(0.5, 0.5) == pytest.approx(0.0)  # as the retain model
    assert mia_scores.privleak(1.0, 0.5) == pytest.approx(-100.0, abs=1e-6)  # the forget rows still stand out
    assert mia_scores.privleak(0.9, 0.6) == pytest.approx((0.1 - 0.4) / 0.4 * 100)
    assert mia_scores.privleak(0.3, 0.5) == pytest.approx(40.0)  # unlearned past the retain model


def test_the_reference_attack_scores_the_loss_beyond_the_retain_models(attack):
    family = MembershipInference(gradnorm=False)
    # a retain model that differs from the model, and whose min-k AUC differs too (scaled alone, it ranked
    # the rows as the model did: PrivLeak 0, whatever its formula)
    retain_model = copy.deepcopy(attack.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in retain_model.parameters():
            p.mul_(0.9).add_(0.05 * torch.randn(p.shape, generator=generator))
    state = copy.deepcopy(vars(family))
    found = family.before(attack, retain_model)
    assert vars(family) == state  # the family kept nothing: `after` reads what `before` returned
    family.after(attack, found)
    rows = {(r["stage"], r["split"], r["index"]): r for r in attack.rows}
    for (stage, split, index), row in rows.items():
        if stage in ("mia_target", "mia"):
            assert row["reference"] == pytest.approx(row["loss"] - rows["mia_retain_model", split, index]["loss"])
    aucs = attack.results["mia"]["forget_vs_holdout"]
    retain = attack.results["mia_retain_model"]["forget_vs_holdout"]

    # MUSE's PrivLeak by hand, from the per-example min-k scores of the unlearned and the retain model:
    # MUSE's AUC is the chance that a forget row scores above a holdout row (ties count half), Mann-Whitney's
    # U of the forget rows over n_forget n_holdout; PrivLeak = (AUC_unlearned - AUC_retain) / AUC_retain x 100
    def muse_auc(stage):
        forget, holdout = (
            [row["min_k"] for (s, split, _), row in rows.items() if s == stage and split == name]
            for name in ("forget", "holdout")
        )
        return mannwhitneyu(forget, holdout).statistic / (len(forget) * len(holdout))

    unlearned_auc, retain_auc = muse_auc("mia"), muse_auc("mia_retain_model")
    assert retain_auc > 0 and unlearned_auc != pytest.approx(retain_auc)  # a gap for PrivLeak to measure
    assert aucs["privleak"] == pytest.approx((unlearned_auc - retain_auc) / retain_auc * 100, rel=1e-6)
    assert "privleak" not in retain and "reference_auc" not in retain

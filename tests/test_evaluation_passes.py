"""The evaluation's batched passes give every example what a plain one-example forward gives it: the
length sorting, the left padding, the answer-position logits and the shared truth-ratio pass change
the work, not the numbers."""

import math

import pytest
import torch

from simu_lightning.data.formatting import IGNORE_INDEX, encode_document, encode_example, encode_prompt
from simu_lightning.evaluation import qa
from simu_lightning.evaluation.generation import answer_log_likelihoods, by_length, generations_by_split
from simu_lightning.evaluation.types import EvaluationSettings
from simu_lightning.likelihood import labelled_span
from simu_lightning.unlearning.stopping import StoppingRule


def plain_mean_log_prob(model, example: dict) -> float:
    """One example alone, no padding, every position's logits: the mean log-probability of its labels."""
    ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    labels = torch.tensor(example["labels"][1:])
    scored = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
    return float(logp[scored, labels[scored]].mean())


def test_by_length_computes_in_length_order_and_answers_in_the_callers_order():
    seen = []

    def compute(items):
        seen.append(items)
        return [item.upper() for item in items]

    assert by_length(["ccc", "a", "bb"], len, compute) == ["CCC", "A", "BB"]
    assert seen == [["a", "bb", "ccc"]]


def test_the_labelled_span_of_a_left_padded_batch_reaches_the_position_before_the_first_answer_token():
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9],  # answer at 3-5
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 9],  # answer at 4-5
        ]
    )
    assert labelled_span(labels) == 4  # positions 2-5: position 2 predicts the first answer token
    assert labelled_span(torch.full((1, 3), IGNORE_INDEX)) == 1


def test_one_generation_pass_over_every_split_gives_each_prompt_its_own_greedy_answer(
    tiny_model, small_benchmark, prompt_format
):
    model, tokenizer = tiny_model
    model.eval()
    prompts = {
        name: [encode_prompt(tokenizer, prompt_format, q) for q in small_benchmark[name]["question"][:5]]
        for name in ("forget", "retain", "world_facts")
    }
    texts = generations_by_split(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert {name: len(t) for name, t in texts.items()} == {name: 5 for name in prompts}
    for name, split in prompts.items():
        for prompt, text in zip(split, texts[name]):
            with torch.no_grad():  # one prompt alone: no padding, no batch
                out = model.generate(
                    torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            assert text == tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True), name


def test_batched_answer_likelihoods_equal_one_example_forwards(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    model.eval()
    split = small_benchmark["retain"]
    pairs = [(q, a) for q, a in zip(split["question"], split["answer"])]
    pairs += [(q, w) for q, wrongs in zip(split["question"], split["perturbed_answer"]) for w in wrongs]
    examples = [encode_example(tokenizer, prompt_format, q, a, 64) for q, a in pairs]
    assert len({len(e["input_ids"]) for e in examples}) > 3  # lengths differ: the batches pad
    batched = answer_log_likelihoods(model, examples, tokenizer.pad_token_id, batch_size=8)
    for example, (total, count, *_) in zip(examples, batched):
        answer_tokens = sum(label != IGNORE_INDEX for label in example["labels"])
        assert count == answer_tokens
        assert total / count == pytest.approx(plain_mean_log_prob(model, example), rel=1e-5, abs=1e-6)


def test_answers_to_one_question_run_its_prompt_once_and_score_as_one_example_forwards_do(
    tiny_model, small_benchmark, prompt_format
):
    """A truth-ratio row's answers share the question's pass (evaluation/shared_prompts.py): the model sees
    each distinct prompt in one row of the prompt pass and each answer in one row of the answer pass, and
    every answer's log-probability, argmax hits and extraction prefix are those of its own forward alone."""
    model, tokenizer = tiny_model
    model.eval()
    split = small_benchmark["retain"]
    pairs = [
        (q, a)
        for q, a, wrongs in zip(split["question"], split["answer"], split["perturbed_answer"])
        for a in [a, *wrongs]
    ]
    examples = [encode_example(tokenizer, prompt_format, q, a, 64) for q, a in pairs]
    rows = {"prompt": 0, "answer": 0}

    def count(module, args, kwargs):
        rows["answer" if kwargs.get("cache") is not None else "prompt"] += kwargs["input_ids"].shape[0]

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    scored = answer_log_likelihoods(model, examples, tokenizer.pad_token_id, batch_size=8)
    hook.remove()
    assert rows == {"prompt": len(set(split["question"])), "answer": len(examples)}
    for example, (total, count_, hits, counted, prefix) in zip(examples, scored):
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        labels = example["labels"][1:]
        answer = [t for t, label in enumerate(labels) if label != IGNORE_INDEX][:-1]  # the EOS not counted
        misses = [k for k, t in enumerate(answer) if int(logits[t].argmax()) != labels[t]]
        assert count_ == len(answer) + 1 and counted == len(answer)
        assert hits == len(answer) - len(misses) and prefix == (misses[-1] + 1 if misses else 0)
        assert total / count_ == pytest.approx(plain_mean_log_prob(model, example), rel=1e-5, abs=1e-6)


def test_batched_document_likelihoods_never_score_a_first_token_from_the_padding(tiny_model):
    """Every token of a document is labelled; left-padded, its first token would be predicted from a pad
    position. Each document's mean NLL must be the one it has alone, which predicts its n - 1 last tokens."""
    model, tokenizer = tiny_model
    model.eval()
    texts = ["Alpha was born in Brill.", "Beta writes poetry.", "Gamma lives in the town of Trask."]
    examples = [encode_document(tokenizer, text, 64) for text in texts]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # the shorter ones are padded
    batched = answer_log_likelihoods(model, examples, tokenizer.pad_token_id, batch_size=3)
    for example, (total, count, *_) in zip(examples, batched):
        assert count == len(example["input_ids"]) - 1
        assert total / count == pytest.approx(plain_mean_log_prob(model, example), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("paraphrased", [True, False])
def test_the_shared_pass_gives_each_row_the_truth_ratio_of_its_own_answers(
    paraphrased, tiny_model, small_benchmark, prompt_format
):
    """TR = exp(mean of the perturbed answers' mean log-probs) / exp(the correct answer's), the correct
    answer being the paraphrased answer, or the answer itself where a split has no paraphrase."""
    model, tokenizer = tiny_model
    model.eval()
    split = small_benchmark["retain"].select(range(4))
    if not paraphrased:
        split = split.remove_columns("paraphrased_answer")
    correct_answers = split["paraphrased_answer"] if paraphrased else split["answer"]
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=5)
    rows = qa.split_rows(model, tokenizer, prompt_format, split, settings, "retain", [""] * len(split))

    def plain(question, answer):
        return plain_mean_log_prob(model, encode_example(tokenizer, prompt_format, question, answer, 64))

    for row, question, answer, correct_answer, wrongs in zip(
        rows, split["question"], split["answer"], correct_answers, split["perturbed_answer"]
    ):
        answer_logp, correct = plain(question, answer), plain(question, correct_answer)
        wrong = [plain(question, w) for w in wrongs]
        expected = math.exp(sum(wrong) / len(wrong)) / (math.exp(correct) + qa.EPS)
        assert row["truth_ratio"] == pytest.approx(expected, rel=1e-4)
        assert row["answer_prob"] == pytest.approx(math.exp(answer_logp), rel=1e-4)
        mass = sum(math.exp(w) for w in wrong)
        assert row["normalised_prob"] == pytest.approx(math.exp(answer_logp) / (math.exp(answer_logp) + mass), rel=1e-4)


def test_a_split_left_out_of_truth_ratio_splits_scores_no_perturbed_answer(tiny_model, small_benchmark, prompt_format):
    model, tokenizer = tiny_model
    split = small_benchmark["forget"].select(range(2))
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=5, truth_ratio_splits=("retain",))
    rows = qa.split_rows(model, tokenizer, prompt_format, split, settings, "forget", ["x"] * len(split))
    assert all("truth_ratio" not in row and "normalised_prob" not in row for row in rows)
    assert all(row["answer_prob"] > 0 for row in rows)


def test_a_split_left_out_of_likelihood_splits_runs_no_forward_and_keeps_its_generation_metrics(
    tiny_model, small_benchmark, prompt_format
):
    """A probe point read only through forget exact match: the split's rows are its generations' metrics,
    the same as with likelihoods, and the model is never called (a model that raises stands in for it)."""
    model, tokenizer = tiny_model
    split = small_benchmark["forget"].select(range(3))
    generations = [split[0]["answer"], "something else", f" {split[2]['answer']} "]
    settings = EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=5, likelihood_splits=("retain",))

    class NoForward(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("a split without likelihoods ran the model")

    rows = qa.split_rows(NoForward(), tokenizer, prompt_format, split, settings, "forget", generations)
    full = qa.split_rows(
        model,
        tokenizer,
        prompt_format,
        split,
        EvaluationSettings(max_length=64, max_new_tokens=4, batch_size=5),
        "forget",
        generations,
    )
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 1.0]  # the answer itself, stripped
    generation_metrics = {"question", "answer", "generation", *qa.GENERATION_METRICS}
    assert all(set(row) == generation_metrics for row in rows)
    assert rows == [{k: v for k, v in row.items() if k in generation_metrics} for row in full]
    assert set(qa.summarise(rows, forget=True)) == set(qa.GENERATION_METRICS)


class Benchmark:
    utility_splits = ("retain", "world_facts")


@pytest.mark.parametrize(
    "rule, splits",
    [
        (None, ("retain", "world_facts")),  # model utility at every point, nothing else
        ("forget.exact_match<=0.1", ("retain", "world_facts")),
        ("forget.truth_ratio>=0.5", ("retain", "world_facts", "forget")),
        ("forget_quality>=0.05 and retain.normalised_prob>=0.2", ("retain", "world_facts", "forget")),
        ("model_utility>=0.3 and aggregate>=0.5", ("retain", "world_facts")),
        ("some_score>=1", None),  # a score this cannot place: every split, as "all"
    ],
)
def test_the_truth_ratios_an_evaluation_during_unlearning_needs(rule, splits):
    assert qa.truth_ratio_splits_needed(Benchmark(), StoppingRule.parse(rule)) == splits

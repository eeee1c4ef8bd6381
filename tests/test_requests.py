"""Continual unlearning requests: the requests' rows, each request's mask from its own attribution and the
earlier ones', their overlap, and whole runs whose per-request bookkeeping is checked against the files."""

import json

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from conftest import run_here
from simu_lightning.unlearning.requests import Requests, jaccard, overlaps, request_masks, request_rows
from simu_lightning.utils.errors import SimuError
from test_run import SMALL


def authors_split(authors: list[str]) -> Dataset:
    return Dataset.from_list([{"question": f"q{i}", "answer": "a", "author": a} for i, a in enumerate(authors)])


def test_requests_by_author_keep_each_author_whole_in_order():
    forget = authors_split(["A", "A", "B", "B", "B", "C", "D", "D", "E"])
    assert request_rows(forget, Requests(count=3, by="author")) == [[0, 1, 2, 3, 4], [5, 6, 7], [8]]
    assert request_rows(forget, Requests(count=5)) == [[0, 1], [2, 3, 4], [5], [6, 7], [8]]  # auto: authors


def test_requests_by_rows_cut_consecutive_rows_as_even_as_they_divide():
    forget = Dataset.from_list([{"question": f"q{i}", "answer": "a"} for i in range(7)])
    assert request_rows(forget, Requests(count=3)) == [[0, 1, 2], [3, 4], [5, 6]]  # auto: no author column


@pytest.mark.parametrize(
    "settings, forget, message",
    [
        (dict(count=4, by="author"), authors_split(["A", "B", "C"]), "count=4: the forget split holds 3 authors"),
        (dict(count=2, by="author"), Dataset.from_list([{"question": "q", "answer": "a"}] * 3), "no author column"),
        (dict(count=5, by="rows"), Dataset.from_list([{"question": "q", "answer": "a"}] * 3), "holds 3 rows"),
    ],
)
def test_requests_that_cannot_be_cut_are_refused_naming_the_setting(settings, forget, message):
    with pytest.raises(SimuError, match=message):
        request_rows(forget, Requests(**settings))


@pytest.mark.parametrize(
    "settings, field",
    [
        (dict(count=0), "unlearning.requests.count"),
        (dict(by="chapter"), "unlearning.requests.by"),
        (dict(masks="all"), "unlearning.requests.masks"),
        (dict(masks="union", protect_earlier=True), "unlearning.requests.protect_earlier"),
    ],
)
def test_bad_request_settings_name_the_field(settings, field):
    with pytest.raises(SimuError, match=field):
        Requests(**settings)


def masks(*layers: str) -> dict[str, torch.Tensor]:
    return {f"layer{i}": torch.tensor([c == "1" for c in bits]) for i, bits in enumerate(layers)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_request_mask_combines_its_own_neurons_with_the_earlier_ones_as_configured():
    first, second, own = masks("1100", "0010"), masks("0110", "0000"), masks("0011", "0011")
    assert same(request_masks(own, [first, second], Requests(masks="per_request")), own)
    assert same(request_masks(own, [first, second], Requests(masks="union")), masks("1111", "0011"))
    assert same(request_masks(own, [first, second], Requests(protect_earlier=True)), masks("0001", "0001"))
    assert same(request_masks(own, [], Requests(masks="union")), own)
    assert same(own, masks("0011", "0011"))  # the request's own attribution is not changed in place


def test_mask_overlap_is_the_jaccard_index_over_every_layer():
    a, b = masks("1100", "0010"), masks("0110", "0011")
    assert jaccard(a, b) == pytest.approx(2 / 5)  # both: 1 + 1; either: 3 + 2
    assert jaccard(masks("00"), masks("00")) is None
    assert overlaps([a, b, a]) == [{}, {"request_1": pytest.approx(0.4)}, {"request_1": 1.0, "request_2": 0.4}]


REQUESTS = [
    *SMALL,
    "benchmark.num_authors=6",
    "benchmark.forget_fraction=0.5",  # 3 forget authors: a request each
    "unlearning/requests=sequential",
    "unlearning.requests.count=3",
    "evaluation.every_n_steps=1",
    "trainer.max_epochs=2",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("requests_cache")


def summary_of(curve: list[dict], step: int, split: str) -> dict[str, float]:
    return {row["metric"]: row["value"] for row in curve if row["step"] == step and row["split"] == split}


def test_a_run_of_requests_unlearns_each_from_the_model_the_one_before_left(tmp_path, cache):
    results = run_here([*REQUESTS, "method=simu", "unlearning.requests.protect_earlier=true"], tmp_path, cache)
    requests = results["requests"]
    rows = [r["rows"] for r in requests]
    assert sorted(i for r in rows for i in r) == list(range(len(rows[0]) * 3))  # a partition of the forget rows
    assert [list(r["after"]) for r in requests] == [
        ["forget", "retain", "world_facts"],
        ["forget", "request_1", "retain", "world_facts"],
        ["forget", "request_1", "request_2", "retain", "world_facts"],
    ]
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    steps = sorted({row["step"] for row in curve})
    taken = [r["stopped"]["step"] for r in requests]
    assert steps == [0, taken[0], taken[0] + taken[1], sum(taken)] and results["stopped"]["step"] == sum(taken)
    for k in (1, 2):  # request k+1 starts from the model the whole-benchmark point after request k evaluated
        assert requests[k]["before"]["retain"] == pytest.approx(summary_of(curve, steps[k], "retain"), abs=1e-6)
        earlier = requests[k - 1]["after"]["forget"]  # the earlier request's rows, as it left them
        assert requests[k]["before"]["request_" + str(k)]["rougeL_recall"] == pytest.approx(earlier["rougeL_recall"])
    assert results["after"]["forget"] == pytest.approx(summary_of(curve, sum(taken), "forget"), abs=1e-6)
    # protect_earlier: no request's mask holds a neuron the requests before it attributed
    mask = {k: torch.load(tmp_path / "requests" / str(k) / "attribution" / "critical_neurons.pt") for k in (1, 2, 3)}
    for layer in mask[1]:
        assert not (mask[2][layer] & mask[1][layer]).any()
        assert not (mask[3][layer] & (mask[1][layer] | mask[2][layer])).any()
    assert requests[1]["overlap"].keys() == {"request_1"} and requests[2]["overlap"].keys() == {
        "request_1",
        "request_2",
    }


def test_requests_reusing_the_first_mask_leave_every_other_neuron_bit_identical(tmp_path, cache):
    results = run_here([*REQUESTS, "method=simu", "unlearning.requests.masks=reuse_first"], tmp_path, cache)
    first = torch.load(tmp_path / "requests" / "1" / "attribution" / "critical_neurons.pt")
    assert [r["critical_neurons"] for r in results["requests"]] == [results["requests"][0]["critical_neurons"]] * 3
    target = load_file(f"{results['target']}/model.safetensors")
    unlearned = load_file(tmp_path / "unlearned_model" / "model.safetensors")
    for name, mask in first.items():
        weight = f"{name}.weight"
        outside = ~mask
        assert torch.equal(unlearned[weight][:, outside], target[weight][:, outside])
        assert not torch.equal(unlearned[weight][:, mask], target[weight][:, mask])


def test_requests_run_under_every_method_and_report_sophia_over_all_steps(tmp_path, cache):
    results = run_here([*REQUESTS, "method=so"], tmp_path, cache)
    taken = sum(r["stopped"]["step"] for r in results["requests"])
    assert results["sophia"]["steps"] == taken == sum(r["sophia"]["steps"] for r in results["requests"])
    assert "critical_neurons" not in results["requests"][0]

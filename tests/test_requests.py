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
    # each request's fit probes around the benchmark's levels (full_around=auto); the whole benchmark's curve
    # evaluates every point in full
    overrides = ["method=simu", "unlearning.requests.protect_earlier=true", "evaluation.during.full_around=auto"]
    results = run_here([*REQUESTS, *overrides], tmp_path, cache)
    requests = results["requests"]
    rows = [r["rows"] for r in requests]
    assert sorted(i for r in rows for i in r) == list(range(len(rows[0]) * 3))  # a partition of the forget rows
    assert [list(r["after"]) for r in requests] == [
        ["forget", "retain", "retain_heldout", "world_facts"],
        ["forget", "request_1", "retain", "retain_heldout", "world_facts"],
        ["forget", "request_1", "request_2", "retain", "retain_heldout", "world_facts"],
    ]
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    steps = sorted({row["step"] for row in curve})
    taken = [r["stopped"]["step"] for r in requests]
    assert steps == [0, taken[0], taken[0] + taken[1], sum(taken)] and results["stopped"]["step"] == sum(taken)
    # every point of the whole benchmark's curve is complete: no levels were probed around (results.json)
    assert results["points"] == {"levels": None, "full": steps, "not_full": []}
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


def request_callbacks(scores: list[dict], settings, requests: Requests, seed: int = 0, unit: str = "neurons"):
    """Each request's RequestAttribution in turn, given each request's constructed (integrated-gradient)
    scores, as unlearn_requests chains them: the callbacks, and each one's mask."""
    from types import SimpleNamespace

    from simu_lightning.pipeline.continual import RequestAttribution

    trainer = SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[]))
    callbacks, chosen = [], []
    for k, own in enumerate(scores):
        callback = RequestAttribution(settings, seed=seed, requests=requests, index=k, earlier=list(callbacks))
        callback.compute = lambda trainer, pl_module, examples, split, unit, own=own: own
        select = callback.select if unit == "neurons" else callback.select_heads
        chosen.append(select(trainer, None)[1])
        callbacks.append(callback)
    return callbacks, chosen


def top(count: int, n: int = 1000, layers: int = 4) -> dict[str, torch.Tensor]:
    """Scores whose threshold at t = 0.5 keeps `count` of each layer's n neurons."""
    return {f"layer{i}": (torch.arange(n) < count).float() + 0.01 for i in range(layers)}


def independent_jaccard(a: int, b: int, n: int) -> float:
    """The Jaccard index two independent uniform draws of a and b of n neurons come to (per layer, the
    intersection's mean is a b / n; with 4 layers of 1000 the spread is about 0.01)."""
    both = a * b / n
    return both / (a + b - both)


def test_random_requests_draw_independently_and_the_first_draws_as_a_run_without_requests():
    """D2: every request drew from the run's seed, so each random mask was a prefix of one permutation
    (Jaccard 200/300 = 0.67 for counts 200 and 300, where independent draws give 0.14). Each request now
    draws with its own seed; the first with the run's, as a run without requests."""
    from simu_lightning.attribution.settings import AttributionSettings

    settings = AttributionSettings(t=0.5, selection="random")
    callbacks, _ = request_callbacks([top(200), top(300), top(400)], settings, Requests(count=3), seed=5)
    draws = [c.attributed for c in callbacks]
    assert [sum(int(m.sum()) for m in d.values()) for d in draws] == [800, 1200, 1600]
    found = overlaps(draws)
    for k, j, (a, b) in ((1, 0, (300, 200)), (2, 0, (400, 200)), (2, 1, (400, 300))):
        assert found[k][f"request_{j + 1}"] == pytest.approx(independent_jaccard(a, b, 1000), abs=0.03)
    alone, _ = request_callbacks([top(200)], settings, Requests(count=1), seed=5)
    assert same(alone[0].attributed, draws[0])
    from simu_lightning.attribution.callback import NeuronAttribution
    from types import SimpleNamespace

    plain = NeuronAttribution(settings, seed=5)
    plain.compute = lambda trainer, pl_module, examples, split, unit: top(200)
    assert same(plain.select(SimpleNamespace(datamodule=SimpleNamespace(forget=[], retain=[])), None)[1], draws[0])


def test_protect_earlier_under_random_neurons_leaves_what_independent_draws_leave():
    """D2: with 300 of 1000 neurons per layer drawn per request, protect_earlier leaves request 2 the
    neurons of its draw outside request 1's (300 x 0.7 = 210 per layer expected) and request 3 those outside
    both (300 x 0.49 = 147); nested draws of equal counts left nothing."""
    from simu_lightning.attribution.settings import AttributionSettings
    from simu_lightning.unlearning.requests import union

    settings = AttributionSettings(t=0.5, selection="random")
    callbacks, masks = request_callbacks([top(300)] * 3, settings, Requests(count=3, protect_earlier=True))
    draws = [c.attributed for c in callbacks]
    assert same(masks[0], draws[0])
    for k in (1, 2):
        protected = union(draws[:k])
        assert same(masks[k], {name: draws[k][name] & ~protected[name] for name in draws[k]})
    kept = [sum(int(m.sum()) for m in mask.values()) / 4 for mask in masks]
    assert kept[0] == 300
    assert kept[1] == pytest.approx(300 * 0.7, abs=15) and kept[2] == pytest.approx(300 * 0.7**2, abs=15)


HEAD_SCORES = [  # each request's head scores: at t = 0.5, request 1 keeps heads {0, 1}, 2 {1, 2}, 3 {2, 3}
    {"o0": torch.tensor([1.0, 0.9, 0.1, 0.0])},
    {"o0": torch.tensor([0.0, 1.0, 0.8, 0.2])},
    {"o0": torch.tensor([0.1, 0.0, 0.7, 1.0])},
]


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(masks="per_request"), [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]),
        (dict(masks="union"), [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]),
        (dict(protect_earlier=True), [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        (dict(masks="reuse_first"), [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]),
    ],
)
def test_head_masks_follow_the_request_settings(settings, expected):
    """D5: the critical heads of each request are combined with the earlier requests' attributed heads as
    the neurons are (union, protect_earlier), and reuse_first takes the first request's without attributing."""
    from simu_lightning.attribution.settings import AttributionSettings

    scores = HEAD_SCORES if settings.get("masks") != "reuse_first" else [HEAD_SCORES[0], None, None]
    callbacks, masks = request_callbacks(
        scores, AttributionSettings(t=0.5), Requests(count=3, **settings), unit="heads"
    )
    assert [m["o0"].int().tolist() for m in masks] == expected
    attributed = [c.attributed_heads["o0"].int().tolist() for c in callbacks]
    own = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert attributed == ([own[0]] * 3 if settings.get("masks") == "reuse_first" else own)


def test_random_neurons_and_heads_under_protect_earlier_end_to_end(tmp_path, cache):
    """A run of 3 requests with random neurons and heads and protect_earlier: each request's own draw is the
    one its seed gives (request 1's the run's seed), its mask that draw without every earlier request's, for
    the neurons and the heads alike; results.json counts the parameters any request could change."""
    from simu_lightning.attribution.neurons import critical_neurons
    from simu_lightning.attribution.selection import random_like, request_seed
    from simu_lightning.unlearning.requests import union

    args = [*REQUESTS, "method=simu", "attribution.selection=random", "unlearning.requests.protect_earlier=true"]
    results = run_here(
        [*args, "method.trainable=attention_heads_and_down_proj", "attribution.head_t=0.5"], tmp_path, cache
    )
    requests, draws, masks = results["requests"], [], []
    for k in range(3):
        folder = tmp_path / "requests" / str(k + 1) / "attribution"
        scores = torch.load(folder / "scores.pt")  # the integrated-gradient scores whose counts are drawn
        drawn, _ = random_like(critical_neurons(scores, 0.1), request_seed(0, k))
        assert requests[k]["attributed_neurons"] == {name: int(m.sum()) for name, m in drawn.items()}
        masks.append(torch.load(folder / "critical_neurons.pt"))
        protected = union(draws) if draws else {name: torch.zeros_like(m) for name, m in drawn.items()}
        assert same(masks[k], {name: drawn[name] & ~protected[name] for name in drawn})
        draws.append(drawn)
        heads = requests[k]["critical_heads"]
        for j in range(k):  # no request's heads are among those an earlier request attributed
            for name, kept in heads.items():
                assert not set(kept) & set(requests[j]["attributed_heads"][name])
    for k in (1, 2):
        assert requests[k]["overlap"] == {
            f"request_{j + 1}": pytest.approx(jaccard(draws[k], draws[j])) for j in range(k)
        }
    assert not same(draws[0], draws[1])
    hidden = 32  # (SMALL's model.tiny.hidden_size) the rows of each down projection's kept column
    every = union(masks)
    assert results["trained_parameters"]["down_proj"] == hidden * sum(int(m.sum()) for m in every.values())
    assert all(r["trained_parameters"]["down_proj"] == hidden * sum(r["critical_neurons"].values()) for r in requests)

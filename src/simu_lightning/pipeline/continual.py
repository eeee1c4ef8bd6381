"""Stage 4 for continual unlearning requests (`unlearning/requests=sequential`): the forget split cut into
requests (unlearning/requests.py), each unlearned by a Lightning fit of its own, from the model the
request before it left:

  before  = the target on the whole benchmark                       the run's curve starts here
  for each request k:
    view      = the benchmark with forget = request k's rows, and every earlier request's rows as a
                split request_<j> (does what was forgotten stay forgotten?)
    unlearned = unlearn(plan_k, view, ...)                          stage 4 on the view, in requests/<k>/:
                its evaluations and stopping rule, its attribution on the current model (cached under
                a hash of its weights), its mask from `unlearning.requests.masks`
    point     = the model on the whole benchmark (forget = every request's rows)

The conductor gets the last request's `Unlearned`, with the whole benchmark's evaluations in place of the
view's (before: the target; the curve: one point per request; after: the last point), and one entry
per request for results.json (`requests`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass

import torch

from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.attribution.selection import request_seed
from simu_lightning.data.benchmark import Benchmark
from simu_lightning.evaluation.before_cache import read_before, write_before
from simu_lightning.evaluation.callback import curve_point, curve_rows
from simu_lightning.evaluation.retain_model import retain_model_truth_ratios
from simu_lightning.evaluation.types import Evaluation
from simu_lightning.pipeline.baselines import Baselines, evaluator_of
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.prepare import Models
from simu_lightning.pipeline.unlearn import Unlearned, before_cache_file, neuron_attribution, unlearn
from simu_lightning.pipeline.results import trained_parameters
from simu_lightning.models.architecture import architecture_of
from simu_lightning.unlearning.module import win_rate_summary
from simu_lightning.unlearning.requests import Requests, overlaps, request_masks, request_rows, union
from simu_lightning.unlearning.stopping import BUDGET_EXHAUSTED, CONDITION_MET
from simu_lightning.utils.files import write_jsonl

log = logging.getLogger(__name__)

REQUEST_SPLIT = "request_{}"  # an earlier request's forget rows in a later request's evaluations (1-based)


class RequestAttribution(NeuronAttribution):
    """Request k's stage 1 (`index` k, 0-based): its own attribution (on the model the earlier requests
    left), made into its mask with the earlier requests' attributed neurons (`request_masks`); under
    masks=reuse_first, from the second request on, the first request's neurons without attributing again.
    The critical heads (method.trainable=attention_heads_and_down_proj) follow the same rules, with the
    earlier requests' attributed heads. `earlier`: the earlier requests' callbacks, in order.

    `selection=random` draws each request's neurons (and heads) with a seed of its own (selection.
    request_seed): the first request's is the run's, so it draws what a run without requests draws."""

    def __init__(self, *args, requests: Requests, index: int, earlier: list[RequestAttribution], **kwargs):
        super().__init__(*args, **kwargs)
        self.requests, self.index, self.earlier = requests, index, earlier
        self.attributed: dict[str, torch.Tensor] | None = None  # before the earlier requests' are combined in
        self.attributed_heads: dict[str, torch.Tensor] | None = None  # the same for the critical heads

    @property
    def draw_seed(self) -> int:
        return request_seed(self.seed, self.index)

    @property
    def reused(self) -> RequestAttribution | None:
        """masks=reuse_first, from the second request on: the first request's callback, whose masks are taken."""
        return self.earlier[0] if self.requests.masks == "reuse_first" and self.earlier else None

    def select(self, trainer, pl_module):
        if (first := self.reused) is not None:
            log.info("unlearning.requests.masks=reuse_first: the first request's critical neurons, not attributed")
            self.attributed = first.attributed
            return None, clone(first.attributed), {k: m.float() for k, m in first.attributed.items()}
        scores, attributed, ranking = super().select(trainer, pl_module)
        self.attributed = attributed
        earlier = [e.attributed for e in self.earlier if e.attributed is not None]
        return scores, request_masks(attributed, earlier, self.requests), ranking

    def select_heads(self, trainer, pl_module):
        if (first := self.reused) is not None and first.attributed_heads is not None:
            log.info("unlearning.requests.masks=reuse_first: the first request's critical heads, not attributed")
            self.attributed_heads = first.attributed_heads
            heads = first.attributed_heads
            return None, clone(heads), {k: m.float() for k, m in heads.items()}
        scores, attributed, ranking = super().select_heads(trainer, pl_module)
        self.attributed_heads = attributed
        earlier = [e.attributed_heads for e in self.earlier if e.attributed_heads is not None]
        return scores, request_masks(attributed, earlier, self.requests), ranking


def clone(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: mask.clone() for name, mask in masks.items()}


@dataclass
class WholeBenchmark:
    """The evaluations of the model on the whole benchmark, as the conductor reads a fit's: the target
    (`before`), one point per request (`points`, step = the steps taken so far), the last (`after`)."""

    before: Evaluation
    after: Evaluation | None = None
    points: list[dict] = dataclasses.field(default_factory=list)
    stopped: dict | None = None
    seconds: float = 0.0
    probe: None = None  # no probe: each request's point is evaluated in full


def request_view(benchmark: Benchmark, rows: list[list[int]], k: int) -> Benchmark:
    """The benchmark as request k (0-based) sees it: its rows as the forget split, each earlier request's
    as a split of its own, evaluated beside the benchmark's own evaluation splits."""
    forget = benchmark[benchmark.forget]
    earlier = {REQUEST_SPLIT.format(j + 1): forget.select(rows[j]) for j in range(k)}
    return dataclasses.replace(
        benchmark,
        splits={**benchmark.splits, benchmark.forget: forget.select(rows[k]), **earlier},
        eval_splits=(benchmark.forget, *earlier, *(s for s in benchmark.eval_splits if s != benchmark.forget)),
        forgotten_splits=tuple(earlier),
    )


def weights_id(model: torch.nn.Module) -> str:
    """A content hash of the weights: the identity of a model the earlier requests made, for the caches
    keyed by the model (attribution scores)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def request_evaluator(plan: RunPlan, view: Benchmark, models: Models, baselines: Baselines, rows: list[int]):
    """The view's evaluator, with the retain model's forget truth ratios of this request's rows."""
    if plan.evaluation.retain_model_results:  # ratios read from a file, one per forget row: this request's
        by_index = {row["index"]: row for row in baselines.retain_model_ratios}
        retain = [dict(by_index[i], index=n) for n, i in enumerate(rows) if i in by_index]
    else:
        settings = plan.evaluation_for(view)
        retain = retain_model_truth_ratios(
            view,
            models.target,
            models.fmt,
            settings,
            plan.model.dtype,
            plan.cache_dir,
            None,
            plan.trainer.device,
        )
    return evaluator_of(plan, view, models, retain)


def evaluate_target(plan: RunPlan, models: Models, baselines: Baselines) -> Evaluation:
    """The target on the whole benchmark (cached as a run without requests caches it)."""
    cached = before_cache_file(plan, models, baselines)
    if cached is not None and cached.exists():
        return read_before(cached)
    before = baselines.evaluator(models.model, "before")
    if cached is not None:
        write_before(cached, before)
    return before


def request_entry(k: int, rows: list[int], unlearned: Unlearned, attribution: RequestAttribution) -> dict:
    """results.json `requests[k]`: its rows, where it stopped, its view's evaluations before and after
    (its own forget split, the earlier requests', retain, ...), its critical neurons (and heads: the mask,
    and its own attribution's), the parameters its fit could change, its time."""
    return {
        "request": k + 1,
        "rows": rows,
        "stopped": unlearned.stopped,
        "before": unlearned.before.summary,
        "after": unlearned.after.summary,
        "scores": {"before": unlearned.before.scores, "after": unlearned.after.scores},
        **({"critical_neurons": attribution.kept} if attribution.kept else {}),
        **(
            {"attributed_neurons": {name: int(m.sum()) for name, m in attribution.attributed.items()}}
            if attribution.attributed is not None
            else {}
        ),
        **({"critical_heads": attribution.heads_kept} if attribution.heads is not None else {}),
        **(
            {
                "attributed_heads": {
                    name: m.nonzero().flatten().tolist() for name, m in attribution.attributed_heads.items()
                }
            }
            if attribution.attributed_heads is not None
            else {}
        ),
        "trained_parameters": unlearned.trained_parameters,
        **({"sophia": sophia} if (sophia := win_rate_summary(unlearned.win_rates)) else {}),
        "timings_s": {
            "evaluation": round(unlearned.evaluation_seconds, 2),
            "attribution": round(attribution.seconds, 2),
            "unlearning": round(unlearned.step_seconds, 2),
        },
    }


def unlearn_requests(plan: RunPlan, benchmark: Benchmark, models: Models, baselines: Baselines) -> Unlearned:
    """Every request unlearned in turn, each from the model the one before left: the record of the last
    fit, with the whole benchmark's evaluations (the target, then the model after each request), every
    request's win rates, what any request could change (the union of their masks) and one entry per
    request."""
    requests: Requests = plan.requests
    rows = request_rows(benchmark[benchmark.forget], requests, benchmark.forget)
    log.info("unlearning.requests: %d requests of %s forget rows", len(rows), "/".join(str(len(r)) for r in rows))
    start = time.perf_counter()
    whole = WholeBenchmark(before=evaluate_target(plan, models, baselines))
    whole.seconds = time.perf_counter() - start
    whole.points.append(curve_point(0, 0, whole.before, benchmark.aggregate))
    attributions: list[RequestAttribution] = []
    entries, win_rates, steps, met = [], [], 0, True
    current = models
    for k, request in enumerate(rows):
        view = request_view(benchmark, rows, k)
        plan_k = plan.at(plan.out / "requests" / str(k + 1))  # its own folder: curve, logs, attribution
        current = left_by_earlier(models, current) if k else current
        attribution = neuron_attribution(
            plan_k, current, RequestAttribution, requests=requests, index=k, earlier=list(attributions)
        )
        log.info("request %d of %d: %d forget rows", k + 1, len(rows), len(request))
        request_baselines = dataclasses.replace(
            baselines, evaluator=request_evaluator(plan, view, models, baselines, request), attacks=None
        )
        unlearned = unlearn(plan_k, view, current, request_baselines, attribution=attribution, cache_before=k == 0)
        attributions.append(attribution)
        entries.append(request_entry(k, request, unlearned, attribution))
        win_rates += [r for r in unlearned.win_rates if r == r]
        steps += unlearned.stopped["step"]
        met = met and unlearned.stopped["reason"] == CONDITION_MET
        start = time.perf_counter()
        evaluation = baselines.evaluator(current.model, "after")
        whole.seconds += time.perf_counter() - start
        whole.points.append(curve_point(steps, k + 1, evaluation, benchmark.aggregate))
        whole.after = evaluation
    add_overlaps(entries, attributions)
    # every request met the stopping rule, or not; the steps of all requests together
    whole.stopped = {
        "reason": CONDITION_MET if met else BUDGET_EXHAUSTED,
        "step": steps,
        "epoch": unlearned.stopped["epoch"],
        "requests": len(rows),
    }
    whole.after = Evaluation(
        whole.after.summary, whole.after.scores, [{**r, "stage": "after"} for r in whole.after.rows]
    )
    write_jsonl(plan.out / "curve.jsonl", curve_rows(whole.points))
    return whole_record(plan, unlearned, whole, win_rates, attributions, entries)


def whole_record(plan: RunPlan, last: Unlearned, whole: WholeBenchmark, win_rates, attributions, entries) -> Unlearned:
    """The run's record: the last request's fit, with the whole benchmark's evaluations (no probe plan:
    every request's point is complete), every request's win rates, the union of their masks, the entries."""
    return dataclasses.replace(
        last,
        before=whole.before,
        after=whole.after,
        points=whole.points,
        stopped=whole.stopped,
        probe=whole.probe,
        evaluation_seconds=whole.seconds,
        win_rates=win_rates,
        trained_parameters=run_trained(plan, last, attributions),
        requests=entries,
    )


def left_by_earlier(models: Models, current: Models) -> Models:
    """The model the earlier requests left: the caches keyed by the model know it by its weights."""
    target_id = f"{models.target.target_id}+{weights_id(current.model)}"
    return dataclasses.replace(current, target=dataclasses.replace(current.target, target_id=target_id))


def add_overlaps(entries: list[dict], attributions: list[RequestAttribution]) -> None:
    """Each request's entry gets how its own attributed neurons (and heads) overlap the others'."""
    for unit, key in (("attributed", "overlap"), ("attributed_heads", "head_overlap")):
        attributed = [getattr(a, unit) for a in attributions]
        if all(masks is not None for masks in attributed):
            for entry, overlap in zip(entries, overlaps(attributed)):
                entry[key] = overlap


def run_trained(plan: RunPlan, unlearned: Unlearned, attributions: list[RequestAttribution]) -> dict[str, int]:
    """trained_parameters of a run of requests: the entries that any request's fit could change (the union
    of the requests' masks; each request's own count is in its entry)."""
    method, model = plan.method, unlearned.model
    neurons = union([a.neurons for a in attributions]) if method.needs_attribution else None
    heads = union([a.heads for a in attributions]) if method.critical_head_mask else None
    return trained_parameters(model, architecture_of(model, plan.model.architecture), neurons, heads)

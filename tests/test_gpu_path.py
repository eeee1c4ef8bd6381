"""What a GPU node would break and a CPU machine never shows, each simulated on the CPU: the model off its
device after Lightning's teardown (tests/fake_gpu.py), a grad scaler's scale, bf16 tensors, CUDA masks."""

from __future__ import annotations

import json
import traceback

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.overrides import TorchFunctionMode

from conftest import composed_run, run_here
from fake_gpu import FakeGpu
from simu_lightning.attribution.integrated_gradients import _attention_mask
from simu_lightning.data import synthetic
from simu_lightning.data.datamodule import UnlearningDataModule
from simu_lightning.data.formatting import IGNORE_INDEX
from simu_lightning.models.architecture import architecture_of, down_projections
from simu_lightning.models.loading import load_pretrained
from simu_lightning.optim import MaskedAdamW, Sophia
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.unlearning.losses import GradDiff
from simu_lightning.unlearning.module import UnlearningModule
from simu_lightning.utils.errors import SimuError
from test_run import SMALL
from test_unlearning_module import SO


@pytest.fixture()
def fake_gpu(monkeypatch):
    gpu = FakeGpu(monkeypatch)
    yield gpu
    gpu.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


ON_ONE_GPU = [*SMALL, "trainer.precision=32-true", "evaluation.base=true", "evaluation.cache_before=false"]


@pytest.mark.slow
def test_every_model_a_run_scores_after_the_fit_is_on_the_gpu_attacks_included(fake_gpu, cache, tmp_path):
    """Lightning's teardown moves the LightningModule to the CPU before `on_fit_end`: "after" (no point
    during the run here, so it is evaluated on its own), the attacks on the unlearned model and on the
    copies relearned by their own fits, and the retain model's and the base model's evaluations must all
    run on the run's device."""
    attacks = [
        "robustness=standard",
        "robustness.families.relearning.steps=1",
        "robustness.families.quantization.schemes=[rtn8]",
        "robustness.families.probes.prefixes=[Recall:]",
        "robustness.families.mia.gradnorm=false",
    ]
    results = run_here([*ON_ONE_GPU, "method=simu", *attacks], tmp_path, cache)
    assert "relearn_forget" in results["robustness"] and results["after"]["forget"]
    assert len(fake_gpu.forwards) > 100 and fake_gpu.on_cpu() == []
    stages = {stage for stage, _, _ in fake_gpu.forwards}
    assert {"unlearn/after", "attacks/relearn_forget", "baselines/base", "baselines/retain_model"} <= stages


@pytest.mark.slow
def test_continual_requests_evaluate_the_whole_benchmark_on_the_gpu_after_each_fit(fake_gpu, cache, tmp_path):
    requests = [
        *ON_ONE_GPU,
        "benchmark.num_authors=6",
        "benchmark.forget_fraction=0.34",
        "unlearning/requests=sequential",
        "unlearning.requests.count=2",
    ]
    results = run_here([*requests, "method=simu"], tmp_path, cache)
    assert len(results["requests"]) == 2
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert len({row["step"] for row in curve}) == 3  # the target, then the whole benchmark after each request
    assert fake_gpu.on_cpu() == []


# -- precision ---------------------------------------------------------------------------------------
def fit(module, data, steps: int, **trainer):
    """`steps` unlearning steps of `module` in one Lightning fit on the CPU."""
    L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    ).fit(module, data)
    return module


def fit_so(model, tokenizer, benchmark, fmt, steps: int, batch_size: int = 2, **trainer):
    """A few SO-GradDiff steps (Sophia on every parameter, a GNB estimate at each) in one Lightning fit."""
    L.seed_everything(0, verbose=False)
    module = UnlearningModule(model, SO, GradDiff(), architecture_of(model))
    data = UnlearningDataModule(benchmark, tokenizer, fmt, batch_size=batch_size, max_length=64)
    return fit(module, data, steps, **trainer)


def hessians(module) -> list:
    optimizer = module.trainer.optimizers[0]
    return [optimizer.state[p]["hessian"] for p in module.model.parameters() if p in optimizer.state]


def scaled_16_mixed(scale: float):
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
    return MixedPrecision("16-mixed", "cpu", scaler)


def test_16_mixed_leaves_sophias_hessian_as_an_unscaled_pass_gives_it(tiny_model_dir, small_benchmark, prompt_format):
    """The GNB backward goes through the grad scaler (manual_backward multiplies by S): unscaled, h is the
    h of a scale-1 run up to fp16 rounding; scaled, it would be S^2 = 2^32 times larger."""
    runs = {}
    for scale in (1.0, 2.0**16):
        model, tokenizer = load_pretrained(tiny_model_dir)
        module = fit_so(model, tokenizer, small_benchmark, prompt_format, steps=2, plugins=[scaled_16_mixed(scale)])
        runs[scale] = torch.cat([h.flatten() for h in hessians(module)])
    assert runs[1.0].sum() > 0
    ratio = runs[2.0**16].sum() / runs[1.0].sum()
    assert 0.9 < float(ratio) < 1.1


def test_an_overflowed_hessian_estimate_under_16_mixed_is_skipped_not_kept(
    tiny_model_dir, small_benchmark, prompt_format
):
    """With a scale that overflows fp16's gradients, the estimate is dropped: h holds no inf or NaN."""
    model, tokenizer = load_pretrained(tiny_model_dir)
    module = fit_so(model, tokenizer, small_benchmark, prompt_format, steps=2, plugins=[scaled_16_mixed(2.0**120)])
    assert all(torch.isfinite(h).all() for h in hessians(module))
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def small_bf16_steps(optimizer_class, steps: int, masks=None, lr: float = 5e-6, **settings):
    """`steps` optimiser steps on a bf16 weight of 0.02-sized entries, with a fixed gradient, under the
    bf16 default dtype that Lightning's bf16-true sets around every step."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter((0.02 + 0.005 * torch.rand(8, 6)).to(torch.bfloat16))
    start = weight.detach().clone()
    optimizer = optimizer_class([weight], lr=lr, weight_decay=0.0, **settings)
    if masks is not None:
        optimizer.set_masks({weight: masks})
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        for _ in range(steps):
            weight.grad = torch.full_like(weight, 0.5)
            if hasattr(optimizer, "update_hessian"):
                optimizer.update_hessian()
                optimizer.step(bs=1)
            else:
                optimizer.step()
    finally:
        torch.set_default_dtype(default)
    return weight, start, optimizer


@pytest.mark.parametrize("optimizer", ["sophia", "adamw"])
def test_bf16_weights_take_updates_far_below_their_rounding_step(optimizer):
    """At lr 5e-6 a step moves a 0.02-sized weight by 5e-6, a twentieth of its bf16 spacing (2^-13): 40 steps
    add up to 2e-4, which the weights show only if each step was kept in fp32 (a master copy)."""
    kind = {"sophia": lambda params, **kw: Sophia(params, rho=1e-30, **kw), "adamw": MaskedAdamW}[optimizer]
    weight, start, opt = small_bf16_steps(kind, 40)
    moved = (start.float() - weight.float()).abs()
    assert float((moved > 0).float().mean()) > 0.9  # bf16 updates straight into the weights: almost none moves
    # every step of both is lr (Sophia clipped, AdamW's m / sqrt(v) = 1 for a constant gradient): the weights
    # moved by 40 lr to within one bf16 spacing (2^-13 between 2^-6 and 2^-5)
    assert float((moved - 40 * 5e-6).abs().max()) <= 2**-13
    state = opt.state[weight]
    assert all(t.dtype == torch.float32 for t in state.values() if isinstance(t, torch.Tensor))


def test_sophias_step_counter_counts_past_256_under_the_bf16_default_dtype():
    weight, _, opt = small_bf16_steps(lambda params, **kw: Sophia(params, rho=0.04, **kw), 300, lr=1e-4)
    assert float(opt.state[weight]["step"]) == 300.0


@pytest.mark.parametrize("compact_state", [True, False])
@pytest.mark.parametrize("optimizer", ["sophia", "adamw"])
def test_a_masked_bf16_weight_keeps_its_other_entries_bit_identical(optimizer, compact_state):
    kind = {"sophia": lambda params, **kw: Sophia(params, rho=1e-30, **kw), "adamw": MaskedAdamW}[optimizer]
    mask = torch.tensor([[True, False, False, True, False, True]])
    weight, start, _ = small_bf16_steps(kind, 40, masks=mask, compact_state=compact_state)
    assert torch.equal(weight[:, ~mask[0]], start[:, ~mask[0]])
    assert float((weight[:, mask[0]] != start[:, mask[0]]).float().mean()) > 0.9


def test_the_hessians_token_count_is_exact_past_256_under_bf16_true(tiny_model_dir, prompt_format):
    """bf16-true makes bf16 the default dtype around a step: a float token count rounds above 256."""
    benchmark = synthetic.load(num_authors=6, forget_fraction=0.5, holdout_fraction=0.2, seed=0)
    model, tokenizer = load_pretrained(tiny_model_dir)
    batches = []

    class Keep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            batches.append(batch)

    module = fit_so(
        model, tokenizer, benchmark, prompt_format, steps=1, batch_size=24, precision="bf16-true", callbacks=[Keep()]
    )
    (batch,) = batches
    tokens = sum(int((batch[split]["labels"][:, 1:] != IGNORE_INDEX).sum()) for split in ("forget", "retain"))
    assert tokens > 300 and module.hessian_tokens == tokens
    assert all(h.dtype == torch.float32 for h in hessians(module))


@pytest.mark.parametrize(
    "override, setting",
    [("model.dtype=bfloat16", "model.dtype=bfloat16"), ("trainer.precision=bf16-true", "trainer.precision=bf16-true")],
)
def test_unlearning_in_bf16_weights_is_refused_unless_opted_into(override, setting, tmp_path):
    with pytest.raises(SimuError, match=f"^{setting}: .*optim.low_precision_weights=true"):
        RunPlan.of(composed_run([override], tmp_path, tmp_path / "cache"))
    RunPlan.of(composed_run([override, "optim.low_precision_weights=true"], tmp_path, tmp_path / "cache"))
    RunPlan.of(composed_run([override, "mode=evaluate"], tmp_path, tmp_path / "cache"))  # nothing trains


def test_on_a_gpu_the_default_precision_is_bf16_mixed_with_tf32_matmuls(monkeypatch, tmp_path):
    from simu_lightning.pipeline.building import use_tensor_cores

    chosen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", chosen.append)
    cpu = RunPlan.of(composed_run([], tmp_path, tmp_path / "cache"))
    use_tensor_cores(cpu.trainer.device)
    assert cpu.trainer.precision == "32-true" and chosen == []  # the CPU's figures stay float32's
    gpu = FakeGpu(monkeypatch)
    try:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        plan = RunPlan.of(composed_run([], tmp_path, tmp_path / "cache"))
        use_tensor_cores(plan.trainer.device)
    finally:
        gpu.close()
    assert plan.trainer.precision == "bf16-mixed" and chosen == ["high"]


def test_the_eager_attention_mask_is_made_on_the_masks_device(tiny_model):
    """A CUDA mask filling zeros made on the CPU fails; the meta device stands in for CUDA here."""
    model, _ = tiny_model
    model.config._attn_implementation = "eager"
    allowed = torch.tensor([[[[True, False, True]]]])
    assert _attention_mask(allowed.to("meta"), model).device.type == "meta"
    minimum = torch.finfo(torch.float32).min
    assert torch.equal(_attention_mask(allowed, model), torch.tensor([[[[0.0, minimum, 0.0]]]]))


# -- what runs where ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_lumes_mmlu_runs_before_and_after_unlearning_only(monkeypatch, cache, tmp_path):
    """5-shot MMLU at every evaluation point would be most of a LUME run on OLMo-1B."""
    from simu_lightning.evaluation import lume
    from test_run import TINY, write_lume_folder

    stages = []
    monkeypatch.setattr(lume, "mmlu_accuracy", lambda *a, **k: stages.append("mmlu") or 0.5)
    write_lume_folder(tmp_path / "lume")
    overrides = ["benchmark=lume", f"benchmark.path={tmp_path / 'lume'}", "evaluation.max_new_tokens=4", *TINY]
    during = ["evaluation.mmlu=true", "evaluation.every_n_steps=1", "trainer.max_epochs=3"]
    results = run_here([*overrides, *during], tmp_path / "run", cache)
    curve = [json.loads(line) for line in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    assert len({row["step"] for row in curve}) >= 3  # before, a point during, after
    assert stages == ["mmlu", "mmlu"] and results["scores"]["after"]["mmlu"] == 0.5
    with pytest.raises(SimuError, match="reads final_score, which needs MMLU"):
        run_here([*overrides, "evaluation.mmlu=true", "unlearning.stop_when='final_score>=0.5'"], tmp_path, cache)


def test_mmlu_under_several_processes_is_refused_in_one_line(tmp_path):
    with pytest.raises(SimuError, match="^evaluation.mmlu: LUME's MMLU runs through lm-eval in one process"):
        RunPlan.of(composed_run(["evaluation.mmlu=true", "trainer=fsdp"], tmp_path, tmp_path / "cache"))


# -- memory on one device ----------------------------------------------------------------------------
def test_activation_checkpointing_holds_on_one_device_too(tiny_model, small_benchmark, prompt_format):
    """parallel.activation_checkpointing was applied only under FSDP: a decoder layer's MLP runs once more in
    the backward (the layer's recomputation) when it holds."""
    from test_unlearning_module import FO

    model, tokenizer = tiny_model
    calls = {}
    for checkpointing in (False, True):
        # a pre-hook: transformers checkpoints a layer's forward inside its hooks, and torch's recomputation
        # stops as soon as it has what the backward needs, before the MLP returns
        layer = model.model.layers[0].mlp
        handle = layer.register_forward_pre_hook(
            lambda *a, key=checkpointing: calls.update({key: calls.get(key, 0) + 1})
        )
        module = UnlearningModule(
            model, FO, GradDiff(), architecture_of(model), parallel={"activation_checkpointing": checkpointing}
        )
        fit(module, UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64), 1)
        handle.remove()
    assert calls == {False: 2, True: 4}  # forget and retain forward; with checkpointing, again in the backward


def test_parallel_mixed_precision_on_one_device_computes_in_bf16_with_fp32_masters(tmp_path):
    plan = RunPlan.of(composed_run(["parallel.mixed_precision=bf16"], tmp_path, tmp_path / "cache"))
    assert plan.trainer.precision == "bf16-mixed"
    sharded = RunPlan.of(composed_run(["parallel.mixed_precision=bf16", "trainer=fsdp"], tmp_path, tmp_path / "c"))
    assert sharded.trainer.precision == "32-true"  # FSDP2's own policy gathers in bf16 there


# -- host memory of a sharded run --------------------------------------------------------------------
def test_in_a_sharded_run_only_rank_0_reads_the_weights_and_no_process_copies_them(monkeypatch, cache, tmp_path):
    """Every process of an 8-process Llama-2-7B run read the whole fp32 model (27 GB), and NPO's objective
    deep-copied it: 216-432 GB of host memory. Rank 1 now builds the architecture on the meta device, and
    the frozen copy is meta on every rank: rank 0's weights reach both when they are sharded."""
    from simu_lightning.pipeline.prepare import load_benchmark, load_models
    from simu_lightning.pipeline.unlearn import unlearning_module

    overrides = [*SMALL, "trainer=fsdp", "trainer.accelerator=cpu", "loss=npo"]
    plan = RunPlan.of(composed_run(overrides, tmp_path, cache))
    benchmark = load_benchmark(plan)
    rank0 = load_models(plan, benchmark)
    assert not any(p.is_meta for p in rank0.model.parameters())
    monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning's launcher starts the second process
    rank1 = load_models(plan, benchmark)
    assert all(p.is_meta for p in rank1.model.parameters())
    assert [n for n, _ in rank1.model.named_parameters()] == [n for n, _ in rank0.model.named_parameters()]
    for models in (rank0, rank1):
        frozen = unlearning_module(plan, models).frozen_target
        assert all(p.is_meta for p in frozen.parameters())


# -- host synchronisations ---------------------------------------------------------------------------
class HostReads(TorchFunctionMode):
    """Counts the reads of a tensor's value on the host that the project's own code makes (each waits for a
    GPU to finish its queue): .item(), .tolist(), bool(), int(), float(), .cpu(), .numpy()."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            caller = traceback.extract_stack(limit=2)[0]
            if "simu_lightning" in caller.filename:
                self.sites.append(f"{caller.filename.rsplit('/', 1)[-1]}:{caller.name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method, reads", [("fo", 1), ("so", 3), ("simu", 3)])
def test_an_unlearning_step_reads_the_device_from_the_host_at_most_once_per_stage(
    method, reads, tiny_model, small_benchmark, prompt_format
):
    """The non-finite check before the step; with Sophia also the GNB estimate's token count (with its
    check) and the step's win rate and curvature: about 20 reads at fd925a2. The rows' indices, from which
    the GNB labels are drawn, stay on the host."""
    from test_unlearning_module import FO, SIMU

    model, tokenizer = tiny_model
    kind = {"fo": FO, "so": SO, "simu": SIMU}[method]
    module = UnlearningModule(model, kind, GradDiff(), architecture_of(model))
    if method == "simu":  # the masks the attribution would set, without running it here
        module.on_fit_start = lambda: module.set_critical_neurons(
            {
                name: torch.rand(p.weight.shape[1]) < 0.3
                for name, p in down_projections(model, architecture_of(model)).items()
            }
        )
    real, counted = module.unlearning_step, []

    def step(batch):
        with HostReads() as host:
            out = real(batch)
        counted.append(host.sites)
        return out

    module.unlearning_step = step
    data = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=2, max_length=64)
    fit(module, data, 3)
    assert len(counted[-1]) <= reads, counted[-1]
    batch = data.on_before_batch_transfer(next(iter(data.train_dataloader())))
    indices = batch["forget"]["index"].tolist()
    moved = data.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["forget"]["input_ids"].is_meta and moved["forget"]["index"] == indices


def test_undial_allocates_nothing_larger_than_the_float_logits():
    """Its target lowered the answer logit through an int64 one-hot of the vocabulary: twice the float
    logits' bytes, for a figure that needs none (at 7B, 32 x 512 x 32000 x 8 bytes = 4.2 GB)."""
    from torch.profiler import ProfilerActivity, profile

    from simu_lightning.unlearning.losses import UNDIAL
    from test_losses import Given

    rows, length, vocab = 2, 16, 32000
    student, teacher = torch.randn(rows, length, vocab), torch.randn(rows, length, vocab)
    labels = torch.randint(0, vocab, (rows, length))
    labels[:, :4] = IGNORE_INDEX
    given = Given(logits=lambda split, frozen=False: teacher if frozen else student, labels=lambda split: labels)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        loss, _ = UNDIAL(beta=10.0)(given)
    largest = max(event.cpu_memory_usage for event in profiled.events())
    assert largest <= rows * length * vocab * 4
    # the definition, with the one-hot: the same loss
    target = torch.softmax(teacher[:, :-1] - 10.0 * torch.nn.functional.one_hot(labels[:, 1:].clamp(min=0), vocab), -1)
    by_position = -(target * torch.log_softmax(student[:, :-1], -1)).sum(-1)
    assert torch.equal(loss, by_position[labels[:, 1:] != IGNORE_INDEX].mean())


def test_running_out_of_memory_in_a_compiled_step_is_raised_and_leaves_the_kernels_compiled(monkeypatch):
    """A CUDA OOM in the first compiled step marked torch.compile unavailable for the rest of the process."""
    from simu_lightning.optim import fused

    def out_of_memory(fn, **kwargs):
        def compiled(*args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return compiled

    monkeypatch.setattr(fused.torch, "compile", out_of_memory)
    monkeypatch.setattr(fused.Kernels, "_compiled", {})
    monkeypatch.setattr(fused.Kernels, "_unavailable", None)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = Sophia([weight], lr=0.1, fused=True)
    weight.grad = torch.ones(3)
    with pytest.raises(torch.OutOfMemoryError):
        optimizer.update_hessian()
    assert fused.Kernels._unavailable is None and optimizer.kernels.use_compiled(10)


# -- will it fit -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_gpu_run_plans_its_memory_and_refuses_to_start_where_it_would_not_fit(monkeypatch, cache, tmp_path, caplog):
    """Between the plan with activation checkpointing and the plan without it, `auto` turns it on (each
    layer's MLP then runs again in the backward); below both, the run refuses in one line before the fit."""
    from transformers.models.olmo import modeling_olmo

    from simu_lightning.memory import plan_memory
    from simu_lightning.pipeline.building import memory_setup
    from simu_lightning.pipeline.fits import longest_row
    from simu_lightning.pipeline.prepare import load_benchmark, load_models
    from simu_lightning.pipeline.unlearn import unlearning_data

    overrides = [*SMALL, "trainer.precision=bf16-mixed", "method=fo"]
    plan = RunPlan.of(composed_run(overrides, tmp_path / "probe", cache))
    benchmark = load_benchmark(plan)
    length = longest_row(unlearning_data(plan, benchmark, load_models(plan, benchmark)))
    sizes = {}
    for checkpointing in (True, False):
        setting = [*overrides, f"parallel.activation_checkpointing={str(checkpointing).lower()}"]
        setup = memory_setup(composed_run(setting, tmp_path / "probe", cache))
        sizes[checkpointing] = plan_memory(setup, length=length, device_bytes=2**40).total
    assert sizes[True] < sizes[False]
    real, calls = modeling_olmo.OlmoMLP.forward, []
    # the passes with gradients: the unlearning steps' (the evaluations run without)
    monkeypatch.setattr(
        modeling_olmo.OlmoMLP, "forward", lambda self, x: calls.append(torch.is_grad_enabled()) or real(self, x)
    )
    mlp_passes, logged = {}, {}
    for name, total in (("roomy", 2**40), ("between", (sizes[True] + sizes[False]) // 2)):
        gpu = FakeGpu(monkeypatch, total_memory=total)
        calls.clear()
        caplog.clear()
        try:
            with caplog.at_level("INFO"):
                run_here(overrides, tmp_path / name, cache)
        finally:
            gpu.close()
        mlp_passes[name], logged[name] = sum(calls), caplog.text
    assert "activation checkpointing off" in logged["roomy"] and "activation checkpointing on" in logged["between"]
    assert mlp_passes["between"] > mlp_passes["roomy"]  # the recomputations in the backward
    gpu = FakeGpu(monkeypatch, total_memory=sizes[True] - 2**20)
    calls.clear()
    try:
        with pytest.raises(SimuError, match=r"^memory plan: [\d.]+ GiB per GPU > [\d.]+ GiB on cuda:0 \(weights "):
            run_here(overrides, tmp_path / "too_big", cache)
    finally:
        gpu.close()
    assert not any(calls)  # refused before the fit's first step


def test_the_forward_pass_record_counts_whole_models_by_stage_and_device(tiny_model, tmp_path, monkeypatch):
    """What the device check reads (SIMU_FORWARD_DEVICES): a pass of a whole model counts once, by the
    stage labels around it, and the counts of several runs add up in the file."""
    import copy

    from simu_lightning.utils.devices import RECORD_ENV, recorded_forwards, stage

    model, _ = tiny_model
    elsewhere = copy.deepcopy(model).to("meta")
    ids = torch.tensor([[3, 4, 5]])
    record = tmp_path / "forwards.json"
    monkeypatch.setenv(RECORD_ENV, str(record))
    for _ in range(2):
        with recorded_forwards() as recorder, stage("unlearn"):
            model(input_ids=ids)
            with stage("after"):
                elsewhere(input_ids=ids.to("meta"))
    assert recorder.as_dict() == {"unlearn": {"cpu": 1}, "unlearn/after": {"meta": 1}}
    assert recorder.off_device("cpu") == {"unlearn/after": {"meta": 1}}
    assert json.loads(record.read_text()) == {"unlearn": {"cpu": 2}, "unlearn/after": {"meta": 2}}

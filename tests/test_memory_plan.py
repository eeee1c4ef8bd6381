"""The memory plan (simu_lightning.memory): its static parts equal an exact count on the model built on the
meta device, its activations are within 25% of measured peaks, its per-layer activations are what autograd
saves, its command prints JSON that adds up, and a run that does not fit is refused in one line that
proposes only changes the planner says fit."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from simu_lightning.memory import GiB, check_fits, critical_count, plan_memory, resolve_precision
from simu_lightning.memory.activations import Numerics, Trainable, layer_bytes
from simu_lightning.memory.shape import ModelShape
from simu_lightning.pipeline.building import architecture_values, memory_setup
from simu_lightning.models.architecture import architecture_of, attention_projections, down_projections
from simu_lightning.utils.errors import SimuError

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("olmo1b", "llama2_7b", "smollm2_135m", "tiny")
METHODS = ("fo", "so", "simu")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def setup_of(*overrides: str):
    """What the memory planner reads of the run these overrides compose."""
    return memory_setup(composed(*overrides))


class Tokenizer:
    """What models/tiny.py's build_model reads of the tokenizer it trained (its size: model.tiny.vocab_size)."""

    pad_token_id, eos_token_id = 1, 0

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def meta_model(cfg) -> nn.Module:
    """The model a run would load, built by Hugging Face (or, for the tiny model, by models/tiny.py) on
    the meta device."""
    if cfg.model.source == "tiny":
        from simu_lightning.models.tiny import build_model

        tiny = cfg.model.tiny
        with torch.device("meta"):
            return build_model(
                Tokenizer(tiny.vocab_size), tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.intermediate_size
            )
    values = dict(architecture_values(cfg.model))
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def per_rank(tensors, shards: int) -> int:
    """Bytes one rank holds of tensors fully_shard shards along dim 0: ceil(dim0 / shards) rows (FSDP2 pads
    dim 0 to a multiple of the shard count)."""
    return sum(math.ceil(t.shape[0] / shards) * math.prod(t.shape[1:]) * t.element_size() for t in tensors)


def allocated_state(model: nn.Module, method, share: float) -> list[torch.Tensor]:
    """The optimiser's state as it allocates it for the method's trainable parameters, with the first
    `critical_count` neurons of every down projection critical under a neuron mask. Sophia makes its
    state at first use (`_state`); the AdamW family in its step (run on the meta device, gradients of
    zeros). A masked down projection is a CPU tensor with zero strides (one element of memory): the
    masks' critical columns are found with nonzero(), which the meta device cannot run."""
    arch = architecture_of(model)
    trainable = method.trainable_parameter_names(model, arch)
    if method.needs_attribution:
        for proj in down_projections(model, arch).values():
            shape = proj.weight.shape
            proj.weight = nn.Parameter(torch.empty_strided(shape, (0, 0), dtype=proj.weight.dtype))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.optimizer(params)
    if method.needs_attribution:
        masks = {}
        for proj in down_projections(model, arch).values():
            mask = torch.zeros(1, proj.weight.shape[1], dtype=torch.bool)
            mask[0, : critical_count(proj.weight.shape[1], share)] = True
            masks[proj.weight] = mask
        optimizer.set_masks(masks)
    held = []
    if hasattr(optimizer, "_state"):
        for p in params:  # one parameter's state at a time: a compact one is real memory
            held += [
                torch.empty(t.shape, dtype=t.dtype, device="meta")
                for t in optimizer._state(p).values()
                if isinstance(t, torch.Tensor) and t.dim()
            ]
            optimizer.state.pop(p)
        return held
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor) and t.dim()]


@pytest.mark.parametrize("method_name", METHODS)
@pytest.mark.parametrize("model_name", MODELS)
def test_weights_gradients_state_and_frozen_copy_equal_a_count_of_the_meta_model(model_name, method_name):
    cfg = composed(f"model={model_name}", f"method={method_name}")
    model = meta_model(cfg)
    method = instantiate(cfg.method)
    names = method.trainable_parameter_names(model, architecture_of(model))
    weights = list(model.parameters())  # a tied head once, as named_parameters gives it
    gradients = [p for n, p in model.named_parameters() if n in names]
    state = allocated_state(model, method, 0.1)
    for devices in (1, 2, 8):
        trainer = [] if devices == 1 else ["trainer=fsdp", f"trainer.devices={devices}"]
        plan = plan_memory(setup_of(f"model={model_name}", f"method={method_name}", *trainer), device="cpu")
        assert plan.settings.shards == devices
        assert plan.weights == per_rank(weights, devices)
        assert plan.gradients == per_rank(gradients, devices)
        assert plan.optimizer_state == per_rank(state, devices)
        assert plan.frozen_copy == 0
        npo = plan_memory(setup_of(f"model={model_name}", f"method={method_name}", "loss=npo", *trainer), device="cpu")
        assert npo.frozen_copy == per_rank(weights, devices)
    counts = plan.parameters
    assert counts.total == sum(p.numel() for p in weights)
    assert counts.trainable == sum(p.numel() for p in gradients)
    arch = architecture_of(model)
    down = {f"{m}.weight" for m in down_projections(model, arch)}
    attention = {
        f"{m}.{n}" for m, proj in attention_projections(model, arch).items() for n, _ in proj.named_parameters()
    }
    assert counts.down_proj == sum(p.numel() for n, p in model.named_parameters() if n in down and n in names)
    assert counts.attention == sum(p.numel() for n, p in model.named_parameters() if n in attention and n in names)


def test_the_worst_case_state_is_every_neuron_critical():
    cfg = composed("model=smollm2_135m", "method=simu")
    plan = plan_memory(memory_setup(cfg), device="cpu", critical_share=0.25)
    model = meta_model(cfg)
    assert plan.optimizer_state == per_rank(allocated_state(model, instantiate(cfg.method), 0.25), 1)
    assert plan.optimizer_state_worst == per_rank(allocated_state(meta_model(cfg), instantiate(cfg.method), 1.0), 1)
    assert plan.optimizer_state < plan.optimizer_state_worst


def saved_per_token(kind: str, mode: str, attention: str, trains, layers: int, length: int = 48) -> float:
    """Bytes per token that autograd saves in a forward (parameters and their autocast copies aside)."""
    config = AutoConfig.for_model(
        kind,
        vocab_size=300,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
    )
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention).train()
    for name, param in model.named_parameters():
        param.requires_grad_(trains(name))
    ids = torch.randint(2, 300, (2, length))
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0  # a padded row: the padding mask real batches have
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    casts = {s for p in model.parameters() for s in (tuple(p.shape), tuple(p.shape)[::-1])}  # autocast's copies
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights and not (mode == "autocast" and tuple(tensor.shape) in casts):
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return sum(saved.values()) / ids.numel()


TRAINS = {
    "all": lambda name: True,
    "attention_and_down_proj": lambda name: (
        name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))
        or name.endswith(("o_proj.weight", "down_proj.weight"))
    ),
    "down_proj": lambda name: name.endswith("down_proj.weight"),
}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["fp32", "autocast", "bf16"])
@pytest.mark.parametrize("kind", ["olmo", "llama"])
def test_a_decoder_layer_keeps_what_the_formula_counts(kind, mode, attention):
    length = 48
    shape = ModelShape.of(
        {
            "model_type": kind,
            "vocab_size": 300,
            "hidden_size": 64,
            "intermediate_size": 176,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "attn_implementation": attention,
        }
    )
    for name, trains in TRAINS.items():
        layer = "model.layers.0."
        flags = Trainable(
            qkv=sum(trains(f"{layer}self_attn.{p}_proj.weight") for p in "qkv"),
            o=trains(f"{layer}self_attn.o_proj.weight"),
            gate_up=sum(trains(f"{layer}mlp.{p}_proj.weight") for p in ("gate", "up")),
            down=trains(f"{layer}mlp.down_proj.weight"),
            norms=trains(f"{layer}input_layernorm.weight"),
            final_norm=False,
            lm_head=False,
        )
        measured = saved_per_token(kind, mode, attention, trains, 3, length) - saved_per_token(
            kind, mode, attention, trains, 2, length
        )
        assert measured == layer_bytes(shape, Numerics(mode), flags, length), name


TINY_LOGITS = [  # the logits dominate (vocabulary 4096), three retain rows per forget row: the GNB pass peaks
    "model=tiny",
    "model.tiny.vocab_size=4096",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=256",
    "data.batch_size=2",
    "data.retain_per_forget=3",
]
TINY_LAYERS = [  # the decoder layers dominate (vocabulary 256, 4 layers, intermediate 512)
    "model=tiny",
    "model.tiny.vocab_size=256",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=4",
    "model.tiny.intermediate_size=512",
    "data.batch_size=2",
    "data.retain_per_forget=1",
]


def test_planned_activations_are_within_a_quarter_of_measured_peaks():
    from perf.memory_plan import compare

    runs = [{"overrides": [*TINY_LOGITS, f"method={m}"], "length": 384} for m in METHODS]
    runs.append({"overrides": [*TINY_LAYERS, "method=simu"], "length": 512})
    results = compare(runs)
    for run, result in zip(runs, results):
        assert result["measured"] > 64 * 2**20, run  # well above the resident set's noise
        assert abs(result["planned_activations"] - result["measured"]) <= 0.25 * result["measured"], (run, result)
    so, layers = results[1]["passes"], results[-1]["passes"]
    assert so["hessian_estimate"]["logits"] > so["loss"]["logits"]  # the GNB pass was the one measured
    assert layers["loss"]["layers"] > 5 * layers["loss"]["logits"]  # and here the decoder layers


def run_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "simu_lightning.memory", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_the_command_prints_a_plan_whose_parts_sum_to_its_total_and_refuses_a_bad_override_in_one_line():
    out = run_command("model=olmo1b", "benchmark=lume", "method=simu", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in plan["bytes"].values())
    assert sum(plan["bytes"].values()) == plan["total"]
    assert all(isinstance(v, int) for v in plan["parameters"].values())
    assert plan["settings"]["length"] == 512 and plan["settings"]["critical_share"] == 0.1
    assert plan["fits"] == (plan["total"] <= plan["device_bytes"]) and plan["device_bytes"] == 80 * GiB
    for bad, named in (("method=sgd", "method"), ("trainer.precision=fp8", "trainer.precision")):
        out = run_command("model=olmo1b", bad)
        assert out.returncode != 0 and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1 and named in out.stderr and "Traceback" not in out.stderr


NO_CHECKPOINTING = ["parallel.activation_checkpointing=false"]  # (auto, the default, would turn it on)


def overrides_of(fix: str) -> list[str]:
    """'trainer.devices=2 with trainer=fsdp' -> the overrides it stands for."""
    return fix.split(" with ")


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=olmo1b", "benchmark=lume", "method=simu", "trainer.precision=bf16-mixed", *NO_CHECKPOINTING],
        ["model=llama2_7b", "method=fo", "trainer.precision=bf16-mixed", "data.batch_size=16", *NO_CHECKPOINTING],
    ],
)
def test_a_run_that_does_not_fit_is_refused_naming_only_changes_that_fit(overrides):
    budget = 80 * GiB
    plan = plan_memory(setup_of(*overrides), device_bytes=budget)
    assert not plan.fits(budget)
    with pytest.raises(SimuError) as refused:
        check_fits(plan, budget, where="cuda:0")
    message = str(refused.value)
    assert "\n" not in message and "cuda:0" in message and f"{plan.total / GiB:.1f} GiB" in message
    fixes = message.split("fits with ", 1)[1].split(", or ")
    assert fixes
    for fix in fixes:
        assert plan_memory(setup_of(*overrides, *overrides_of(fix)), device_bytes=budget).fits(budget), fix
        for part in overrides_of(fix):  # the fewest devices, the largest batch
            key, value = part.split("=")
            if key == "trainer.devices" and int(value) > 2:
                smaller = [*overrides, *overrides_of(fix.replace(part, f"{key}={int(value) // 2}"))]
                assert not plan_memory(setup_of(*smaller), device_bytes=budget).fits(budget)
            if key == "data.batch_size":
                larger = [*overrides, *overrides_of(fix.replace(part, f"{key}={int(value) * 2}"))]
                assert not plan_memory(setup_of(*larger), device_bytes=budget).fits(budget)


def test_a_run_that_fits_passes_and_auto_settings_resolve_for_the_device():
    tiny = plan_memory(setup_of("model=tiny", "trainer.precision=auto"), device_bytes=80 * GiB)
    check_fits(tiny, 80 * GiB)
    assert tiny.settings.precision == "bf16-mixed" and tiny.cuda_context > 0
    assert plan_memory(setup_of("model=tiny", "trainer.precision=auto"), device="cpu").settings.precision == "32-true"
    auto = ["model=olmo1b", "benchmark=lume", "method=simu", "parallel.activation_checkpointing=auto"]
    assert plan_memory(setup_of(*auto), device_bytes=80 * GiB).settings.activation_checkpointing
    assert not plan_memory(
        setup_of(*auto, "data.batch_size=4"), device_bytes=80 * GiB
    ).settings.activation_checkpointing
    assert resolve_precision("auto", "cuda") == "bf16-mixed" and resolve_precision(32, "cuda") == "32-true"
    with pytest.raises(SimuError, match="trainer.precision"):
        resolve_precision("fp8", "cuda")

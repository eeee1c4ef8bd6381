"""Every YAML under conf/ composes, passes the run's checks, and builds what it describes (without
weights or network): the lightning-hydra-template habit of composing configs into tmp_path."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import ROOT, SHARED_DATA, write_muse_folder
from simu_lightning.pipeline.plan import RunPlan
from simu_lightning.pipeline.building import make_trainer
from simu_lightning.attribution.callback import NeuronAttribution
from simu_lightning.data.formatting import PromptFormat
from simu_lightning.robustness import Robustness
from simu_lightning.unlearning.methods import Method
from simu_lightning.unlearning.requests import Requests

CONF = ROOT / "conf"
# every folder of options, nested ones (unlearning/requests) included; hydra/launcher/slurm is tested below
GROUPS = sorted(
    p.relative_to(CONF).as_posix()
    for p in CONF.rglob("*")
    if p.is_dir() and any(p.glob("*.yaml")) and p.name != "tuned" and p != CONF / "hydra" / "launcher"
)
DATA = {
    "tofu": [f"benchmark.path={SHARED_DATA / 'tofu'}"],
    "lume": [f"benchmark.path={SHARED_DATA / 'lume'}", "benchmark.max_documents=4"],
}


def options(group: str) -> list[str]:
    """The group's options; a file named _*.yaml is a part that options include, not one of them."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def composed(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.cache_dir = str(tmp_path / "cache")
    RunPlan.of(cfg)  # every setting built, and the rules between them checked
    return cfg


def _raw(cfg, key: str):
    """`key`'s value in `cfg` as written, interpolations unresolved."""
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    return node._get_node(last)._value()


def leaves(node, prefix: str = ""):
    for key, value in node.items_ex(resolve=False):
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def tuned_values(stem: str) -> DictConfig:
    """What conf/tuned/<stem>.yaml sets, the shared files its defaults list names merged in first."""
    own = OmegaConf.load(CONF / "tuned" / f"{stem}.yaml")
    shared = [tuned_values(name) for name in own.pop("defaults", []) if name != "_self_"]
    return OmegaConf.merge(*shared, own)


def tuned_overrides(stem: str) -> list[str]:
    """conf/tuned/<benchmark>_<model>_<loss>.yaml -> the choices that select it."""
    for benchmark in options("benchmark"):
        for model in options("model"):
            for loss in options("loss"):
                if stem == f"{benchmark}_{model}_{loss}":
                    return [f"benchmark={benchmark}", f"model={model}", f"loss={loss}"]
    raise AssertionError(f"conf/tuned/{stem}.yaml matches no benchmark_model_loss combination")


CASES = [(group, option) for group in GROUPS for option in options(group)] + [("tuned", o) for o in options("tuned")]
# what an option needs beside it (the oracle mask needs a planted target)
NEEDS = {("attribution", "planted"): ["benchmark.planted.fraction=0.05"]}


def test_the_cases_cover_every_yaml_under_conf():
    covered = {CONF / group / f"{option}.yaml" for group, option in CASES} | {CONF / "config.yaml"}
    covered |= {CONF / "hydra" / "launcher" / "slurm.yaml"}  # below
    # a shared part (_*.yaml) is covered through the tuned files that include it
    covered |= {
        CONF / "tuned" / f"{name}.yaml"
        for option in options("tuned")
        for name in OmegaConf.load(CONF / "tuned" / f"{option}.yaml").get("defaults", [])
        if name != "_self_"
    }
    assert covered == set(CONF.rglob("*.yaml"))


def test_the_slurm_launcher_asks_for_a_task_per_gpu_on_every_node_of_the_trainer(tmp_path):
    cfg = composed(["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    get_class(launcher._target_)  # the plugin is installed (the cluster extra)


@pytest.mark.parametrize("group, option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_checks_and_builds(group, option, tmp_path):
    overrides = tuned_overrides(option) if group == "tuned" else [f"{group}={option}", *NEEDS.get((group, option), [])]
    if (group, option) == ("benchmark", "muse"):  # not on these machines: a folder in the hub's layout
        overrides.append(f"benchmark.path={write_muse_folder(tmp_path / 'muse')}")
    benchmark_name = composed(overrides, tmp_path).benchmark._target_.split(".")[-2]  # (experiments choose one)
    cfg = composed(overrides + DATA.get(benchmark_name, []), tmp_path)
    if group == "tuned":  # selected automatically, and every value it sets reached the run's config
        for key, value in leaves(tuned_values(option)):
            if isinstance(value, str) and value.startswith("${"):  # resolved in the run's config
                assert _raw(cfg, key) == value, key
            else:
                assert OmegaConf.select(cfg, key) == value, key
    method = instantiate(cfg.method)
    assert isinstance(method, Method) and (group != "method" or cfg.method.name == option)
    optimizer = method.optimizer([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.param_groups[0]["lr"] == cfg.method.optimizer.lr
    loss = instantiate(cfg.loss)
    assert callable(loss)
    planted = {"layer": torch.ones(3, dtype=torch.bool)} if cfg.benchmark.get("planted", {}).get("fraction") else None
    NeuronAttribution(instantiate(cfg.attribution), output_dir=tmp_path, cache_dir=tmp_path / "cache", planted=planted)
    instantiate(cfg.evaluation)
    PromptFormat(**cfg.model.prompt)
    if cfg.get("robustness"):
        robustness = instantiate(cfg.robustness)
        assert isinstance(robustness, Robustness)
        families = robustness.families
        assert families["relearning"].lr == cfg.model.relearn_lr and list(families["quantization"].schemes)
    if (cfg.get("unlearning") or {}).get("requests"):
        assert isinstance(instantiate(cfg.unlearning.requests), Requests)
    for logger in (cfg.get("logger") or {}).values():
        assert logger is None or "_target_" in logger
    trainer = (
        make_trainer(cfg.trainer, accelerator="cpu", devices=1, logger=False) if "strategy" not in cfg.trainer else None
    )
    assert trainer is None or trainer.max_epochs == cfg.trainer.max_epochs
    if benchmark_name in DATA and not (SHARED_DATA / benchmark_name).exists():
        pytest.skip(f"{SHARED_DATA / benchmark_name} not found: the {benchmark_name} benchmark is not built")
    benchmark = instantiate(cfg.benchmark)
    assert callable(benchmark.suite) and (callable(benchmark.aggregate) or benchmark_name == "muse")
    suites = {"lume": "lume", "muse": "muse"}
    assert benchmark.suite.func.__module__ == f"simu_lightning.evaluation.{suites.get(benchmark_name, 'qa')}"


@pytest.mark.parametrize("stem", [o for o in options("tuned") if "lr_by_method" in tuned_values(o)])
def test_a_tuned_budget_per_method_gives_each_method_its_own_lr(stem, tmp_path):
    tuned = tuned_values(stem)
    by_method = tuned.lr_by_method
    # a method not listed keeps the file's own fallback: ${oc.select:lr_by_method.${method.name},<fallback>}
    fallback = float(_raw(tuned, "method.optimizer.lr").rsplit(",", 1)[1].rstrip("}"))
    for method in options("method"):
        cfg = composed([*tuned_overrides(stem), f"method={method}"], tmp_path)
        assert cfg.method.optimizer.lr == by_method.get(method, fallback), method
    cfg = composed([*tuned_overrides(stem), "method=simu", "method.optimizer.lr=3e-3"], tmp_path)
    assert cfg.method.optimizer.lr == 3e-3  # the command line still wins

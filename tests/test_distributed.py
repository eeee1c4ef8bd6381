"""Multi-process behaviour, always in subprocesses (torchrun or run.py launching its own processes),
never an in-process multi-device Trainer inside pytest."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT
from test_run import SMALL, run_py

FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]


def load_weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def two_processes(script: str, *args) -> str:
    """What tests/distributed/`script` printed, run under torchrun with two processes (it must succeed)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(ROOT / "tests" / "distributed" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_masked_sophia_holds_on_weights_sharded_along_either_dimension():
    assert two_processes("sophia_shards.py").count("sharded masks hold") == 2


def test_a_sharded_evaluation_gathers_each_layer_once_not_once_per_generated_token(tmp_path):
    assert two_processes("unsharded_generation.py", tmp_path / "model").count("gathered once per evaluation") == 2


@pytest.mark.slow
def test_the_attacks_run_on_a_model_fsdp_sharded_in_one_process_as_on_the_plain_model(tmp_path, cache_dir):
    """An FSDP2 module cannot be copied, and the attacks copy the model they attack: they work on a plain
    model of the gathered weights, and find what they find on the same model unsharded."""
    attacks = [
        *SMALL,
        "method=simu",
        "robustness=standard",
        "robustness.families.relearning.steps=2",
        "robustness.families.quantization.schemes=[rtn8]",
        "robustness.families.mia.gradnorm=false",
        "robustness.families.probes.paraphrase=false",
    ]
    sharded = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=1"]
    run_py([*attacks, f"hydra.run.dir={tmp_path / 'plain'}"], cache_dir)
    run_py([*attacks, *sharded, f"hydra.run.dir={tmp_path / 'sharded'}"], cache_dir)
    plain, one = (json.loads((tmp_path / d / "results.json").read_text())["robustness"] for d in ("plain", "sharded"))
    assert {"relearn_forget", "relearn_benign", "rtn8", "mia"} <= set(one)
    for attack in ("relearn_forget", "relearn_benign", "rtn8"):
        for split, values in plain[attack].items():
            assert one[attack][split] == pytest.approx(values, abs=1e-3), (attack, split)


@pytest.mark.slow
def test_two_processes_reproduce_one_and_keep_non_critical_columns(tmp_path, cache_dir):
    run_py([*SMALL, "method=simu", "evaluation.every_n_steps=1", f"hydra.run.dir={tmp_path / 'one'}"], cache_dir)
    run_py([*SMALL, "method=simu", "evaluation.every_n_steps=1", *FSDP, f"hydra.run.dir={tmp_path / 'two'}"], cache_dir)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    # the evaluations during unlearning run sharded too, and trace the same curve
    curves = [
        [json.loads(line) for line in (tmp_path / d / "curve.jsonl").read_text().splitlines()] for d in ("one", "two")
    ]
    assert [(r["step"], r["split"], r["metric"]) for r in curves[0]] == [
        (r["step"], r["split"], r["metric"]) for r in curves[1]
    ]
    assert max(abs(a["value"] - b["value"]) for a, b in zip(*curves)) < 1e-4
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["critical_neurons"] == one["critical_neurons"]
    for split, by_metric in one["after"].items():
        assert two["after"][split] == pytest.approx(by_metric, abs=1e-5)
    # per process, parameters and optimiser state are about halved by sharding
    for kind in ("parameters", "optimizer_state"):
        ratio = two["memory_mb_per_process"][kind] / one["memory_mb_per_process"][kind]
        assert 0.45 < ratio < 0.6, (kind, ratio)

    weights_one, weights_two = (
        load_weights(tmp_path / "one" / "unlearned_model"),
        load_weights(tmp_path / "two" / "unlearned_model"),
    )
    assert max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one) < 1e-5
    target = load_weights(two["target"])
    critical = torch.load(tmp_path / "two" / "attribution" / "critical_neurons.pt")
    for layer, neurons in critical.items():
        name = f"{layer}.weight"
        assert torch.equal(weights_two[name][:, ~neurons], target[name][:, ~neurons]), (
            f"{name}: a non-critical column moved"
        )
        assert not torch.equal(weights_two[name][:, neurons], target[name][:, neurons])
    trained = ("self_attn.", "mlp.down_proj.")
    for name, weight in weights_two.items():  # frozen parameters, sharded beside trained ones, never move
        if not any(part in name for part in trained):
            assert torch.equal(weight, target[name]), f"{name} is frozen under SIMU but moved"


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_end(tmp_path, cache_dir):
    # SIMU, so that resuming also restores the masks, and curves, so that it restores the trajectory
    longer = [*SMALL, "trainer.max_epochs=6", "method=simu", "evaluation.every_n_steps=2", *FSDP]
    run_py([*longer, f"hydra.run.dir={tmp_path / 'whole'}"], cache_dir)

    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "SIMU_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *longer, f"hydra.run.dir={interrupted}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "last.ckpt" / ".metadata").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # both processes, mid-way through the second epoch
    process.wait()
    assert not (interrupted / "results.json").exists()
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=False)
    assert saved["epoch"] < 5, "the checkpoint to resume from must be from the middle of unlearning, not its end"

    run_py([*longer, f"hydra.run.dir={interrupted}"], cache_dir)
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "interrupted"))
    assert "resuming from" in (interrupted / "run.log").read_text()
    for split in whole["after"]:
        assert resumed["after"][split] == pytest.approx(whole["after"][split], abs=1e-5)
    assert resumed["before"] == whole["before"]
    a, b = load_weights(tmp_path / "whole" / "unlearned_model"), load_weights(interrupted / "unlearned_model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert resumed["critical_neurons"] == whole["critical_neurons"]
    curves = [
        [json.loads(line) for line in (tmp_path / d / "curve.jsonl").read_text().splitlines()]
        for d in ("whole", "interrupted")
    ]
    assert [(r["step"], r["split"], r["metric"]) for r in curves[0]] == [
        (r["step"], r["split"], r["metric"]) for r in curves[1]
    ]
    assert max(abs(x["value"] - y["value"]) for x, y in zip(*curves)) < 1e-5


@pytest.mark.slow
def test_a_sweep_of_two_process_jobs_runs_each_job_once(tmp_path, cache_dir):
    run_py(["-m", *SMALL, *FSDP, "method=fo,simu", f"hydra.sweep.dir={tmp_path}"], cache_dir)
    jobs = sorted(p.parent.name for p in tmp_path.glob("*/results.json"))
    assert jobs == ["0_fo", "1_simu"]
    for job in jobs:
        results = json.loads((tmp_path / job / "results.json").read_text())
        assert results["processes"] == 2 and results["method"] == job.split("_")[1]
    assert len(list(tmp_path.glob("*/results.json"))) == 2  # the sweep did not start again inside a job


def test_a_sweep_job_that_srun_started_as_two_slurm_tasks_runs_as_one_two_process_run(tmp_path):
    """What hydra/launcher=slurm leaves to each task of a job: srun starts the job function in every task
    (simulated here: two processes with the variables srun and submitit set), task 0 prepares the target
    alone (a fresh cache) while the other waits, and the two tasks form one FSDP group through
    Lightning's SLURM environment. Its results are those of the same run in one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cache = tmp_path / "cache"
    args = ["-m", *SMALL, *FSDP, "method=fo", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "simu",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }
    env = {**os.environ, "SIMU_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **slurm}
    tasks = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=ROOT,
            env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    swept = json.loads((tmp_path / "sweep" / "0_fo" / "results.json").read_text())
    assert swept["processes"] == 2
    run_py([*SMALL, "method=fo", f"hydra.run.dir={tmp_path / 'one'}"], cache)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for split, by_metric in one["after"].items():
        assert swept["after"][split] == pytest.approx(by_metric, abs=1e-5)

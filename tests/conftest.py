import os

# Nothing in the suite may wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`-n auto`: a worker per core) torch's own threads would oversubscribe the cores; one
# thread each, which the run.py subprocesses a test starts inherit.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from simu_lightning.data import synthetic  # noqa: E402
from simu_lightning.data.formatting import PromptFormat  # noqa: E402
from simu_lightning.models import tiny  # noqa: E402
from simu_lightning.models.loading import load_pretrained  # noqa: E402
from simu_lightning.attribution import prediction_samples  # noqa: E402
from simu_lightning.data.datamodule import encode_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def small_benchmark():
    return synthetic.load(num_authors=6, forget_fraction=0.34, holdout_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, small_benchmark):
    """A freshly initialised tiny OLMo model and its tokenizer, as a Hugging Face folder."""
    path = tmp_path_factory.mktemp("tiny_model")
    texts = [r[c] for s in small_benchmark.splits.values() for r in s for c in ("question", "answer")]
    tiny.create(path, texts, vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return path


@pytest.fixture()
def tiny_model(tiny_model_dir):
    torch.manual_seed(0)
    return load_pretrained(tiny_model_dir)


@pytest.fixture()
def prompt_format():
    return PromptFormat()


@pytest.fixture()
def forget_samples(tiny_model, small_benchmark, prompt_format):
    _, tokenizer = tiny_model
    forget = encode_split(small_benchmark["forget"], tokenizer, prompt_format, max_length=64)
    return forget, prediction_samples(forget, tokenizer.eos_token_id)


def composed_run(overrides: list[str], out: Path, cache_dir: Path):
    """The configuration run.py would compose for `overrides`, with the run directory and cache given,
    and Hydra's runtime set as in a run (the `${hydra:...}` values resolve)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]  # a run's own configuration holds no hydra node (config.yaml neither)
    return cfg


def run_here(overrides: list[str], out: Path, cache_dir: Path) -> dict | None:
    """The conductor in this process, as run.py calls it for one run (no subprocess, no interpreter start)."""
    from simu_lightning.pipeline import run

    return run(composed_run(overrides, out, cache_dir))


def write_muse_folder(folder: Path, documents: int = 4) -> Path:
    """A small MUSE corpus in the hub's layout (a Parquet file per view and split), made up here: the data
    is not on these machines."""
    from datasets import Dataset

    def text(kind: str, i: int) -> str:
        return f"The {kind} report number {i} says that the harbour of Vel{i} opened in {1900 + i} by the sea."

    views = {
        ("raw", "forget"): [{"text": text("forget", i)} for i in range(documents)],
        ("raw", "retain1"): [{"text": text("retain", i)} for i in range(documents)],
        ("verbmem", "forget"): [
            {"prompt": f"The forget report number {i} says that", "gt": f" the harbour of Vel{i} opened"}
            for i in range(documents)
        ],
        ("knowmem", "forget_qa"): [
            {"question": f"When did the harbour of Vel{i} open?", "answer": str(1900 + i)} for i in range(documents)
        ],
        ("knowmem", "retain_qa"): [
            {"question": f"What does retain report {i} describe?", "answer": f"Vel{i}"} for i in range(documents)
        ],
        ("knowmem", "forget_qa_icl"): [{"question": "Where is Vel0?", "answer": "By the sea"}],
        ("knowmem", "retain_qa_icl"): [{"question": "Where is Vel1?", "answer": "By the sea"}],
        ("privleak", "forget"): [{"text": text("forget", i)} for i in range(documents)],
        ("privleak", "holdout"): [{"text": text("holdout", i)} for i in range(documents)],
    }
    for (view, split), rows in views.items():
        (folder / view).mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows).to_parquet(str(folder / view / f"{split}-00000-of-00001.parquet"))
    return folder

import pytest
import torch

from simu_lightning.data.datamodule import UnlearningDataModule, retain_partners
from simu_lightning.data.formatting import IGNORE_INDEX


class FakeTrainer:
    def __init__(self, world_size=1, global_rank=0, current_epoch=0):
        self.world_size, self.global_rank, self.current_epoch = world_size, global_rank, current_epoch


def pairs(datamodule: UnlearningDataModule, trainer: FakeTrainer) -> list[list[tuple[int, int]]]:
    datamodule.trainer = trainer
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(trainer.current_epoch)
    steps = []
    for raw in loader:
        batch = datamodule.on_before_batch_transfer(raw)
        steps.append(list(zip(batch["forget"]["index"].tolist(), batch["retain"]["index"].tolist())))
    return steps


def make(benchmark, tokenizer, fmt, batch_size=4, seed=0):
    return UnlearningDataModule(benchmark, tokenizer, fmt, batch_size=batch_size, max_length=64, seed=seed)


def test_every_forget_batch_comes_with_an_equal_retain_batch(small_benchmark, tiny_model, prompt_format):
    _, tokenizer = tiny_model
    dm = make(small_benchmark, tokenizer, prompt_format)
    dm.trainer = FakeTrainer()
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())))
    assert batch["forget"]["input_ids"].shape[0] == batch["retain"]["input_ids"].shape[0] == 4
    forget_questions = set(small_benchmark["forget"]["question"])
    retain_rows = small_benchmark["retain"]
    assert all(retain_rows[i]["question"] not in forget_questions for i in batch["retain"]["index"].tolist())
    labels = batch["forget"]["labels"]
    assert ((labels == IGNORE_INDEX) | (batch["forget"]["attention_mask"] == 1)).all()


def test_pairing_is_seeded_and_changes_with_the_epoch(small_benchmark, tiny_model, prompt_format):
    _, tokenizer = tiny_model
    a = pairs(make(small_benchmark, tokenizer, prompt_format), FakeTrainer())
    assert a == pairs(make(small_benchmark, tokenizer, prompt_format), FakeTrainer())
    assert a != pairs(make(small_benchmark, tokenizer, prompt_format), FakeTrainer(current_epoch=1))
    assert a != pairs(make(small_benchmark, tokenizer, prompt_format, seed=1), FakeTrainer())
    forget_rows = sorted(i for step in a for i, _ in step)
    assert forget_rows == list(range(len(small_benchmark["forget"])))  # each forget row once per epoch


def test_the_global_batch_does_not_depend_on_the_process_count(small_benchmark, tiny_model, prompt_format):
    """18 forget rows do not divide into global batches of 4 (nor 9 per process into local batches of 2):
    a padding sampler repeats rows at 2 processes that 1 process never sees."""
    _, tokenizer = tiny_model
    from datasets import Dataset

    rows = small_benchmark["forget"].to_list()
    benchmark = type(small_benchmark)(
        "odd", {"forget": Dataset.from_list(rows + rows[:2]), "retain": small_benchmark["retain"]}
    )
    assert len(benchmark["forget"]) == 18
    for epoch in (0, 1):
        single = pairs(make(benchmark, tokenizer, prompt_format, batch_size=4), FakeTrainer(current_epoch=epoch))
        rank0 = pairs(make(benchmark, tokenizer, prompt_format, batch_size=4), FakeTrainer(2, 0, epoch))
        rank1 = pairs(make(benchmark, tokenizer, prompt_format, batch_size=4), FakeTrainer(2, 1, epoch))
        assert len(single) == len(rank0) == len(rank1) == 4  # 16 rows: the last 2 of the epoch's order sit out
        for whole, part0, part1 in zip(single, rank0, rank1):
            assert len(whole) == 4 and sorted(whole) == sorted(part0 + part1)
        seen = [i for step in single for i, _ in step]
        assert len(set(seen)) == len(seen) == 16  # no row repeated within the epoch


def test_retain_partners_are_a_permutation_read_at_the_forget_index():
    partners = retain_partners(seed=3, epoch=0, forget_indices=list(range(10)), num_retain=10)
    assert sorted(partners) == list(range(10))
    assert retain_partners(3, 0, [12], 10) == [partners[2]]  # wraps round
    import numpy as np

    torch.manual_seed(123)
    np.random.seed(123)  # the global generators of both libraries, moved: the partners must not follow them
    np.random.random(7)
    assert retain_partners(3, 0, [4], 10) == [partners[4]]


def test_several_retain_partners_per_forget_row_read_consecutive_positions(small_benchmark, tiny_model, prompt_format):
    order = retain_partners(seed=3, epoch=1, forget_indices=list(range(12)), num_retain=12)
    # forget row i takes positions 3i, 3i + 1, 3i + 2 of the epoch's permutation, wrapping round
    assert retain_partners(3, 1, [0, 2, 5], 12, per_forget=3) == order[0:3] + order[6:9] + order[3:6]
    model, tokenizer = tiny_model
    dm = UnlearningDataModule(small_benchmark, tokenizer, prompt_format, batch_size=4, retain_per_forget=3)
    batch = dm.on_before_batch_transfer(dm.forget[:4])
    assert batch["forget"]["input_ids"].shape[0] == 4 and batch["retain"]["input_ids"].shape[0] == 12


def test_a_refusal_objective_on_documents_is_refused_naming_the_loss(tiny_model, prompt_format):
    from datasets import Dataset

    from simu_lightning.data.benchmark import Benchmark
    from simu_lightning.utils.errors import SimuError

    _, tokenizer = tiny_model
    documents = Dataset.from_dict({"text": ["The harbour of Vel opened in 1901.", "Tolford lies by the sea."]})
    benchmark = Benchmark("muse", {"forget": documents, "retain": documents})
    datamodule = UnlearningDataModule(
        benchmark, tokenizer, prompt_format, batch_size=1, max_length=64, alternates=("I don't know.",)
    )
    with pytest.raises(
        SimuError, match=r"^loss: the refusal objectives \(idk_nll, idk_dpo\) .* 'muse' unlearns documents"
    ):
        datamodule.encode()

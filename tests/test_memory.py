"""Out-of-memory retries: the batch is halved until it fits, and other errors pass through."""

import logging

import pytest
import torch

from simu_lightning.utils.memory import with_halving


def test_the_batch_is_halved_until_it_fits_with_a_warning(caplog):
    tried = []

    def run(size):
        tried.append(size)
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size * 10

    with caplog.at_level(logging.WARNING):
        assert with_halving(run, 16, "generation (evaluation.batch_size)") == 20
    assert tried == [16, 8, 4, 2]
    assert "out of memory in generation (evaluation.batch_size): retrying with batch size 2" in caplog.text


def test_cpu_allocation_failures_count_too_and_other_errors_pass_through():
    calls = []

    def cpu(size):
        calls.append(size)
        if size > 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return "fits"

    assert with_halving(cpu, 4, "attribution") == "fits" and calls == [4, 2, 1]
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with_halving(lambda size: (_ for _ in ()).throw(RuntimeError("shape mismatch")), 8, "attribution")
    with pytest.raises(torch.OutOfMemoryError):  # nothing smaller to try
        with_halving(lambda size: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory")), 1, "attribution")

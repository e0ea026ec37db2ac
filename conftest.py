"""Fixtures shared by tests/ and benchmarks/."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny tensors: extra intra-op threads only contend with other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

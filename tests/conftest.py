import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter on CPU tensors. The variable must be set before
# any @triton.jit function is defined, i.e. before dsno_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def single_thread():
    """Tiny tensors: extra intra-op threads only contend with other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

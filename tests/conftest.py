import os

import torch

# Without a GPU, Triton kernels run in its interpreter on CPU tensors. The variable must be set before
# any @triton.jit function is defined, i.e. before dsno_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

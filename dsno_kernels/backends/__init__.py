"""The backends, one module (or package) each, all of the same shape:

    reference.py   "reference": the torch.fft form (the maths, derived once, lives in its docstring)
    cpp.py         "cpu" and "cuda": bindings to the C++ / CUDA kernels in csrc/
    triton/        "triton": the Triton kernels, a package of one file per concern (its __init__ lists them)

Each opens with a docstring saying only how it differs from the maths in reference.py, then come its
kernels or bindings, its launcher, and its registration: `_library.register_ops` for the
fakes and autograd of its torch.library ops, and `api.register_backend(Backend(...))` with the record
that tests and benchmarks read (devices, auto priority, benchmark device, tolerance traits). Adding a
backend is a new module here plus one import in dsno_kernels/__init__.py.
"""

"""Builds dsno_kernels._C: the C++ CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

    pip install -e . --no-build-isolation      (torch and numpy must already be installed; README.md's
                                                "Install" has a CPU-only and a CUDA recipe)

Switches: DSNO_KERNELS_CUDA=0|1 (skip / require the CUDA part; default: build it when possible),
DSNO_KERNELS_CUDA_ARCHS (default "80;90"), both defined and validated in dsno_kernels/settings.py;
MAX_JOBS (parallel compile jobs).
"""

import glob
import importlib.util
import os
import shutil
import sys

from setuptools import setup

try:
    import torch  # noqa: F401
except ImportError:
    sys.exit(
        "dsno-kernels compiles against the torch you run, so torch must be installed first and the build "
        "must not be isolated:\n    pip install torch numpy\n    pip install -e . --no-build-isolation\n"
        "(a plain `pip install -e .` builds in an isolated environment without torch; README.md's "
        '"Install" has a CPU-only and a CUDA recipe).'
    )

# nvcc may be a wrapper script on PATH (/usr/local/bin/nvcc) from which torch guesses a wrong CUDA_HOME;
# prefer the real toolkit root when there is one.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch.utils.cpp_extension as cpp_ext  # noqa: E402  (reads CUDA_HOME at import)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_settings():
    """dsno_kernels/settings.py by path: importing the package would need the extension being built."""
    spec = importlib.util.spec_from_file_location(
        "_dsno_kernels_settings", os.path.join(HERE, "dsno_kernels", "settings.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


settings = _load_settings()


def _setting(read):
    try:
        return read()
    except ValueError as error:
        sys.exit(f"dsno-kernels: {error}")


def want_cuda() -> bool:
    switch = _setting(lambda: settings.get(settings.BUILD_CUDA))
    possible = torch.version.cuda is not None and cpp_ext.CUDA_HOME is not None
    if switch == "0":
        return False
    if switch == "1":
        if not possible:
            sys.exit(
                "DSNO_KERNELS_CUDA=1 but the CUDA part cannot be built: "
                f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_ext.CUDA_HOME}"
            )
        return True
    return possible


def cuda_gencode_flags() -> list[str]:
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in _setting(settings.cuda_archs)]


def extensions():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    # -march=native: the extension is always compiled on the machine that runs it (pip install -e); its
    # vectorised tile loops use AVX2/AVX-512 where the CPU has them (clearly faster on the project machine).
    # No -std: torch picks C++17 (2.11) or C++20 (2.14).
    cxx_flags = ["-O3", "-fopenmp", "-march=native"]
    link_flags = ["-fopenmp"]
    if want_cuda():
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc_flags = ["-O3", "--threads", "2", "-lineinfo", *cuda_gencode_flags()]
        print(f"dsno-kernels: building C++ + CUDA ({', '.join(cuda_gencode_flags())})")
        return [
            CUDAExtension(
                "dsno_kernels._C",
                cpp_sources + cuda_sources,
                extra_compile_args={"cxx": cxx_flags + ["-DDSNO_WITH_CUDA"], "nvcc": nvcc_flags},
                extra_link_args=link_flags,
            )
        ]
    print("dsno-kernels: building C++ only (no CUDA toolkit / CUDA torch, or DSNO_KERNELS_CUDA=0)")
    return [
        CppExtension("dsno_kernels._C", cpp_sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    ]


if shutil.which("ninja") is None:
    print("dsno-kernels: ninja not found, compiling without it (slower)")

setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)

"""Builds dsno_kernels._C: the C++ CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

    pip install -e . --no-build-isolation      (torch must already be installed; see README.md)

Switches: DSNO_KERNELS_CUDA=0|1 (skip / require the CUDA part; default: build it when possible),
DSNO_KERNELS_CUDA_ARCHS (default "80;90"), MAX_JOBS (parallel compile jobs).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

try:
    import torch  # noqa: F401
except ImportError:
    sys.exit(
        "dsno-kernels compiles against the torch you run, so torch must be installed first and the build "
        "must not be isolated:\n    pip install torch\n    pip install -e . --no-build-isolation\n"
        "(a plain `pip install -e .` builds in an isolated environment without torch)."
    )

# nvcc may be a wrapper script on PATH (/usr/local/bin/nvcc) from which torch guesses a wrong CUDA_HOME;
# prefer the real toolkit root when there is one.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch.utils.cpp_extension as cpp_ext  # noqa: E402  (reads CUDA_HOME at import)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    switch = os.environ.get("DSNO_KERNELS_CUDA", "auto")
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
    if switch != "auto":
        sys.exit(f"DSNO_KERNELS_CUDA must be 0, 1 or unset, got {switch!r}")
    return possible


def cuda_gencode_flags() -> list[str]:
    archs = os.environ.get("DSNO_KERNELS_CUDA_ARCHS", "80;90")
    flags = []
    for arch in filter(None, (a.strip() for a in archs.replace(",", ";").split(";"))):
        if not arch.rstrip("a").isdigit():
            sys.exit(f"DSNO_KERNELS_CUDA_ARCHS must look like '80;90', got {archs!r}")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    return flags


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

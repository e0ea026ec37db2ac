"""Triton itself, or stand-ins where it is not installed, and whether its interpreter runs the kernels."""

import os

try:
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR: ImportError | None = None
except ImportError as error:  # CPU-only torch builds ship without Triton
    TRITON_IMPORT_ERROR = error

    class _MissingTriton:
        """Keeps the kernel definitions importable without Triton: decorators become no-ops and
        annotations placeholders. Nothing launches them (the backend reports it unavailable)."""

        def __getattr__(self, name):
            return lambda fn=None, **options: fn if fn is not None else (lambda fn: fn)

    triton = tl = _MissingTriton()

__all__ = ["triton", "tl", "TRITON_IMPORT_ERROR", "INTERPRETING", "MAX_FUSED_TIME_POINTS"]

# TRITON_INTERPRET=1, set before dsno_kernels is imported: the kernels run in Triton's interpreter on CPU
# tensors (registered as CPU custom ops, one small configuration each, bf16 dot operands upcast).
INTERPRETING = TRITON_IMPORT_ERROR is None and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
# The fused kernels (kernels.py) unroll everything over T; larger T takes the DFT-as-GEMM path (gemm.py).
MAX_FUSED_TIME_POINTS = 32

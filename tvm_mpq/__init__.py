"""tvm_mpq: mixed-precision post-training quantization, chosen against measured device latency,
compiled by Apache TVM.

The small public API (TVM is imported lazily, on first compile):

    from tvm_mpq import load_model, load_profile, quantize_and_compile
    result = quantize_and_compile("efficientnet_lite0", "x86_avx2", "w8a8", out_dir="out")
"""

from .hardware import load_profile
from .models import load_model
from .numerics import CANDIDATES, Candidate
from .plan import Plan, PlanError

__all__ = ["CANDIDATES", "Candidate", "Plan", "PlanError", "load_model", "load_profile", "quantize_and_compile"]


def quantize_and_compile(*args, **kwargs):
    """See `tvm_mpq.pipeline.quantize_and_compile`."""
    from .pipeline import quantize_and_compile as run

    return run(*args, **kwargs)

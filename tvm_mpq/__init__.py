"""tvm_mpq: mixed-precision post-training quantization, chosen against measured device latency,
compiled by Apache TVM.

The small public API (TVM is imported lazily, on first compile):

    from tvm_mpq import SearchConfig, find_plan, quantize_and_compile
    found = find_plan("efficientnet_lite0", "x86_avx2", SearchConfig(min_sqnr_db=30))
    summary = quantize_and_compile("efficientnet_lite0", "x86_avx2", found.plan, out_dir="out")
"""

import os as _os

# TVM's CPU thread pool counts hyper-threads as half a core: on a 2-vCPU machine it runs one thread, so
# profiles, in-model tables and compiled models would use half the machine (and measure a different
# machine than the one a user deploys on). tvm_mpq uses every CPU this process may run on, unless
# TVM_NUM_THREADS says otherwise; the pool reads it when it starts (the first parallel TVM call).
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                                              else (_os.cpu_count() or 1)))

from .hardware import load_profile  # noqa: E402
from .models import load_model  # noqa: E402
from .numerics import CANDIDATES, Candidate  # noqa: E402
from .plan import Plan, PlanError  # noqa: E402

__all__ = ["CANDIDATES", "Candidate", "Plan", "PlanError", "SearchConfig", "load_model", "load_profile",
           "find_plan", "quantize_and_compile"]


def quantize_and_compile(*args, **kwargs):
    """See `tvm_mpq.pipeline.quantize_and_compile`."""
    from .pipeline import quantize_and_compile as run

    return run(*args, **kwargs)


def find_plan(*args, **kwargs):
    """See `tvm_mpq.search.api.search`: phases 1-3, returns a SearchResult with `.plan`."""
    from .search.api import search as run

    return run(*args, **kwargs)


def __getattr__(name):
    if name == "SearchConfig":
        from .search.api import SearchConfig

        return SearchConfig
    raise AttributeError(name)

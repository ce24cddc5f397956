"""Analytic fallback latency: the roofline of a hardware profile.

    time = max(2 * MACs / peak_ops(candidate), bytes moved / memory bandwidth)

Used where no measurement and no trained model exist; a lower bound, not a prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

from ..numerics import Candidate
from .features import as_candidate, bytes_moved, workload_macs

from ..hardware import HardwareProfile, Roofline

if TYPE_CHECKING:
    from ..graph import Workload

__all__ = ["roofline_ms"]


def roofline_ms(workload: "Workload", candidate: Union[Candidate, str],
                roofline: Union[Roofline, HardwareProfile]) -> float:
    """Roofline time in milliseconds of `workload` at `candidate` (a profile's `roofline`, or the profile)."""
    c = as_candidate(candidate)
    if isinstance(roofline, HardwareProfile):
        profile = roofline
        roofline = profile.roofline
        if roofline is None:
            raise ValueError(f"hardware profile {profile.name!r} has no roofline section "
                             "(roofline: {peak_gops: {...}, memory_gbps: ...}); add one to use the analytic fallback")
    peak = roofline.peak_for(c.name)
    if peak is None:
        have = ", ".join(sorted(roofline.peak_gops)) or "none"
        raise ValueError(f"the roofline has no peak_gops for candidate {c.name} (has: {have}); "
                         f"add roofline.peak_gops.{c.name} to the hardware profile")
    if not peak > 0:
        raise ValueError(f"roofline peak_gops for {c.name} must be > 0, got {peak!r}")
    if roofline.memory_gbps is None or not roofline.memory_gbps > 0:
        raise ValueError(f"the roofline needs memory_gbps > 0, got {roofline.memory_gbps!r}")
    compute_s = 2.0 * workload_macs(workload) / (peak * 1e9)
    memory_s = bytes_moved(workload, c) / (roofline.memory_gbps * 1e9)
    return max(compute_s, memory_s) * 1e3

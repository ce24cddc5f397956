"""Latency of (workload, candidate) pairs on one hardware profile.

- `features`: the feature vector of a pair (pure NumPy).
- `xgb`: `LatencyModel`, an XGBoost ensemble trained on measurements, with uncertainty (xgboost is
  imported lazily, on first fit / predict / load).
- `roofline`: the analytic fallback from a profile's roofline section.
"""

from .features import FEATURE_NAMES, bytes_moved, featurize, featurize_many, workload_macs
from .roofline import roofline_ms
from .xgb import (LatencyModel, LatencyModelConfig, LatencyModelError, evaluate, samples_from_measurements,
                  spearman)

__all__ = [
    "FEATURE_NAMES", "bytes_moved", "featurize", "featurize_many", "workload_macs", "roofline_ms",
    "LatencyModel", "LatencyModelConfig", "LatencyModelError", "evaluate", "samples_from_measurements", "spearman",
]

"""Search over tables: sensitivity × cost → Pareto front (phase 2) → selection (phase 3).

Pure functions of NumPy/SciPy over typed tables; no torch, no TVM. I/O, plotting and CLI live outside.
"""

from .exact import OptimalityGap, exact_front, exact_front_for, exact_min_cost, optimality_gap
from .pareto import ORDERS, compare_fronts, pareto_front, prune_dominated
from .select import (CachedEvaluator, Selection, check_monotonic, evaluate_curve, select_within_budget,
                     select_within_drop)
from .tables import (CostTable, ParetoPoint, SensitivityTable, bops_cost_table, candidate_bits,
                     latency_cost_table, predicted_noise, predicted_sqnr_db)

__all__ = [
    "CachedEvaluator", "CostTable", "ORDERS", "OptimalityGap", "ParetoPoint", "Selection", "SensitivityTable",
    "bops_cost_table", "candidate_bits", "check_monotonic", "compare_fronts", "evaluate_curve", "exact_front",
    "exact_front_for", "exact_min_cost", "latency_cost_table", "optimality_gap", "pareto_front",
    "predicted_noise", "predicted_sqnr_db", "prune_dominated", "select_within_budget", "select_within_drop",
]

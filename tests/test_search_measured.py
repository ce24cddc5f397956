"""The final choice on measured latency (search.measured) and interleaved timing (measure.interleaved)."""

import pytest

from tvm_mpq.measure.interleaved import interleave, local_target
from tvm_mpq.search.measured import (Candidate, candidates_for_budget, candidates_for_target, pick_fastest,
                                     pick_within_budget)
from tvm_mpq.search.tables import ParetoPoint


def _c(label, config, predicted, quality):
    return Candidate(label, ParetoPoint(config, predicted, float("nan"), 0, quality), quality)


SEL = _c("selected", {"a": "W8A8", "b": "FP32"}, 8.0, 31.0)
FP32 = _c("FP32", {"a": "FP32", "b": "FP32"}, 10.0, float("inf"))
W8A8 = _c("W8A8", {"a": "W8A8", "b": "W8A8"}, 6.0, 20.0)
F1 = _c("front[1]", {"a": "FP32", "b": "W8A8"}, 9.0, 33.0)
DUP = _c("front[2]", {"a": "W8A8", "b": "FP32"}, 8.0, 31.0)  # same config as the selected point


def test_candidates_for_target_keep_only_qualifying_distinct_points_in_order():
    got = candidates_for_target(SEL, [FP32, W8A8, DUP, F1], 30.0, limit=4)
    assert [c.label for c in got] == ["selected", "FP32", "front[1]"]
    assert [c.label for c in candidates_for_target(SEL, [FP32, W8A8, F1], 30.0, limit=2)] == ["selected", "FP32"]
    with pytest.raises(ValueError, match="at least 1"):
        candidates_for_target(SEL, [], 30.0, limit=0)


def test_pick_fastest_measured_among_qualifying():
    cands = [SEL, FP32, F1]
    choice = pick_fastest(cands, {"selected": 9.5, "FP32": 9.0, "front[1]": 9.2}, 30.0)
    assert choice.chosen is FP32 and choice.met and "faster than the predicted choice" in choice.message
    same = pick_fastest(cands, {"selected": 7.0, "FP32": 9.0, "front[1]": 9.2}, 30.0)
    assert same.chosen is SEL and "also the fastest" in same.message
    # a failed build (no measurement) is skipped; a point below the target is never chosen
    skip = pick_fastest([SEL, W8A8, FP32], {"W8A8": 1.0, "FP32": 9.0}, 30.0)
    assert skip.chosen is FP32
    none = pick_fastest(cands, {}, 30.0)
    assert none.chosen is SEL and "kept" in none.message
    d = choice.to_dict()
    assert d["chosen"] == "FP32" and [p["measured_ms"] for p in d["points"]] == [9.5, 9.0, 9.2]


def test_budget_choice_on_measured_latency():
    cands = candidates_for_budget(SEL, [FP32, W8A8, F1, DUP], limit=3)
    assert [c.label for c in cands] == ["selected", "front[1]", "FP32"]  # nearest by predicted cost
    ok = pick_within_budget(cands, {"selected": 8.5, "front[1]": 8.9, "FP32": 11.0}, 9.0)
    assert ok.chosen is F1 and ok.met  # best quality measured within the budget
    over = pick_within_budget(cands, {"selected": 9.5, "front[1]": 9.8, "FP32": 11.0}, 9.0)
    assert over.chosen is SEL and not over.met and "no measured point" in over.message


def test_interleave_rotates_the_order_and_collects_every_sample():
    order = []

    def sampler(name, values):
        def run():
            order.append(name)
            return values
        return run

    out = interleave({"a": sampler("a", [1.0]), "b": sampler("b", [2.0, 2.5]), "c": sampler("c", [3.0])}, 3)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert out == {"a": [1.0] * 3, "b": [2.0, 2.5] * 3, "c": [3.0] * 3}
    with pytest.raises(ValueError, match="rounds"):
        interleave({}, 0)


def test_local_target_says_why_a_profile_cannot_be_timed_here():
    from tvm_mpq.hardware import load_profile

    assert local_target(load_profile("x86_avx2"))[0] is not None  # this CPU (and CI's) has AVX2
    for name, why in (("cuda_sm90", "targets cuda"), ("arm_a76_dotprod", "over RPC"), ("hexagon_hvx", "hexagon")):
        target, reason = local_target(load_profile(name))
        assert target is None and why in reason

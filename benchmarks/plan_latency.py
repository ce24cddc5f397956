"""Where a plan's predicted latency and its measured latency part: layer by layer, in one compiled model.

The search costs a plan from the latency table (`tvm_mpq.latency`): each layer's in-model segment at its
candidate plus a boundary correction where the next layer takes another activation precision. Here the
plan itself is compiled and timed (uninstrumented, then call by call with the VM instrument, the
instrument's overhead removed as `measure.in_model.segment_ms` does), and each layer's measured segment
is set beside its predicted one, with the neighbours' precisions, so a misprediction shows which
situation the table does not cover (e.g. a precision change two layers away, a residual add fed by
another precision).

    python benchmarks/plan_latency.py --model efficientnet_lite0 --hw x86_avx512_vnni \\
        --plan benchmarks/results/x86_avx512_vnni/search_efficientnet_lite0/plan.yaml [--runs 40]

Needs the model's in-model measurements in the store (`tvm-mpq profile`). Writes
benchmarks/results/<profile>/plan_latency_<model>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_info, results_dir, write_result  # noqa: E402


def _act(cand: str) -> str:
    from tvm_mpq.measure.in_model import act_class

    bits = act_class(cand)
    return "F" if bits == 32 else f"A{bits}"


def run(model: str, hw: str, plan_ref: str, runs: int = 40, rounds: int = 10, store_path=None,
        device=None) -> dict:
    """The comparison (see the module docstring); `store_path`, `device`: as `tvm_mpq.latency.load_latency_table`."""
    import tvm
    from tvm import relax

    from tvm_mpq.build import LatencyStats, build
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.latency import load_latency_table
    from tvm_mpq.measure.in_model import (_CallProfiler, fastest_call_ms, layer_segments, segment_ms,
                                          synthetic_ranges)
    from tvm_mpq.measure.interleaved import interleave, vm_sampler
    from tvm_mpq.models import load_model
    from tvm_mpq.numerics import get_candidate
    from tvm_mpq.plan import Plan, homogeneous_plan, resolve

    spec = load_model(model)
    profile = load_profile(hw)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    graph = imported.graph
    if plan_ref.endswith((".yaml", ".yml")):
        p = Plan.load(plan_ref)
        plan = resolve(Plan(p.layers, synthetic_ranges(graph), model, profile.name, p.calibration, p.default,
                            p.source_lines), graph, profile)
    else:
        plan = resolve(homogeneous_plan(graph, profile, plan_ref, synthetic_ranges(graph), model=model), graph,
                       profile)
    table = load_latency_table(graph, profile, store_path=store_path, device=device)
    if not any(e.source == "in-model" for row in table.layers.values() for e in row.values()):
        raise SystemExit(f"no in-model measurements of {model} on {hw} in the store: run "
                         f"`tvm-mpq profile --model {model} --hw {hw}` first")
    compiled = build(imported, plan, profile.tvm_target())
    inputs = [np.ascontiguousarray(a.numpy()) for a in imported.example_inputs]
    args = [tvm.runtime.tensor(a) for a in inputs]
    prof = _CallProfiler(relax.VirtualMachine(compiled.executable, tvm.cpu()), args)
    whole = vm_sampler(compiled, inputs, calls=2)
    per_round = -(-runs // rounds)
    seconds = interleave({"plan": lambda: (prof.run(per_round), whole())[1]}, rounds)["plan"]
    stats = LatencyStats.from_seconds(seconds, 1)
    symbols, calls = prof.result()
    measured, _ = segment_ms(layer_segments(symbols, calls, graph), stats.median_ms, fastest_call_ms(calls))

    names = list(graph.layers)
    rows = []
    for i, name in enumerate(names):
        cand = get_candidate(plan.layers[name]).name
        nxt = plan.layers[names[i + 1]] if i + 1 < len(names) else None
        prev = plan.layers[names[i - 1]] if i else None
        base = table.layers[name][cand].ms
        corr = table.boundary_ms(name, cand, nxt) if nxt is not None else 0.0
        rows.append({"layer": name, "candidate": cand, "prev": prev, "next": nxt,
                     "situation": f"{_act(prev) if prev else '-'}>{_act(cand)}>{_act(nxt) if nxt else '-'}",
                     "table_ms": base, "boundary_ms": corr, "predicted_ms": base + corr,
                     "measured_ms": measured[name], "error_ms": measured[name] - (base + corr)})
    predicted = table.model_ms(plan.layers)
    by_situation: dict[str, dict] = {}
    for r in rows:
        s = by_situation.setdefault(r["situation"], {"layers": 0, "predicted_ms": 0.0, "measured_ms": 0.0})
        s["layers"] += 1
        s["predicted_ms"] += r["predicted_ms"]
        s["measured_ms"] += r["measured_ms"]
    return {"machine": machine_info(), "model": model, "profile": hw, "plan": plan_ref,
            "measured_ms": stats.to_dict(), "predicted_ms": predicted, "calls": len(symbols),
            "by_situation": by_situation, "layers": rows, "table_notes": list(table.notes)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--hw", required=True)
    parser.add_argument("--plan", required=True, help="a plan file or a homogeneous candidate (W8A8, FP32, ...)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<hw>/plan_latency_<model>.json)")
    args = parser.parse_args(argv)
    result = run(args.model, args.hw, args.plan, args.runs)
    print(f"[plan_latency] {args.model} {args.plan}: predicted {result['predicted_ms']:.3f} ms, measured "
          f"{result['measured_ms']['median_ms']:.3f} ms")
    print(f"{'prev>own>next':>14s} {'layers':>6s} {'predicted':>10s} {'measured':>10s}")
    for sit, s in sorted(result["by_situation"].items(), key=lambda kv: -abs(kv[1]["measured_ms"] - kv[1]["predicted_ms"])):
        print(f"{sit:>14s} {s['layers']:6d} {s['predicted_ms']:10.3f} {s['measured_ms']:10.3f}")
    worst = sorted(result["layers"], key=lambda r: -abs(r["error_ms"]))[:12]
    print("largest differences (measured - predicted, ms):")
    for r in worst:
        print(f"  {r['layer']:40s} {r['situation']:>10s} predicted {r['predicted_ms']:.3f} "
              f"(boundary {r['boundary_ms']:+.3f}) measured {r['measured_ms']:.3f} ({r['error_ms']:+.3f})")
    out = Path(args.out) if args.out else results_dir() / args.hw / f"plan_latency_{args.model}.json"
    write_result(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

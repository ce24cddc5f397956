"""`tvm-mpq` command line: thin wrappers over the API that parse, call and print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .numerics import CANDIDATES as _CANDIDATE_ORDER

MODEL_HELP = (
    "a built-in model name (see `tvm-mpq models`) or PACKAGE.MODULE:FACTORY. "
    "A factory reference imports and runs that user code, like torch.load of a full model: "
    "only name code you trust"
)
HW_HELP = ("a hardware profile name under hw_profiles/ (see `tvm-mpq profiles`), a path to a YAML file, or "
           "'host': the shipped profile of this machine's CPU (x86_avx512_vnni or x86_avx2)")


BIAS_HELP = ("do not take the mean shift that rounding the weights causes (measured per output channel on the "
             "calibration data) off each quantized layer's output")


SMOOTHING_HELP = ("do not smooth W8A8 layers (per-input-channel factors that move activation outliers into the "
                  "weights, chosen per layer on the calibration data)")


def _fmt_db(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.1f}"


def _cmd_compile(args) -> int:
    from .pipeline import quantize_and_compile

    summary = quantize_and_compile(
        args.model, args.hw, args.plan, args.out,
        calib_samples=args.calib_samples, eval_samples=args.eval_samples, range_method=args.range_method,
        bias_correction=False if args.no_bias_correction else None,
        smoothing=False if args.no_smoothing else None,
        compare_fp32=args.compare_fp32, repeat=args.repeat,
        log=lambda m: print(f"[tvm-mpq] {m}", file=sys.stderr, flush=True),
    )
    if summary.get("executed") is False:  # compiled for a device this machine lacks
        print(f"{summary['model']} on {summary['profile']}: " + ", ".join(
            f"{k}: {v}" for k, v in sorted(summary["candidate_counts"].items())))
        print(f"note: {summary['note']}")
        if "artifacts" in summary:
            print(f"wrote {summary['artifacts']['library']}, {summary['artifacts']['plan']}")
        return 0
    lat = summary["latency_ms"]
    rows = [
        ("model", summary["model"]),
        ("profile", summary["profile"]),
        ("plan", summary["plan"]),
        ("layers by precision", ", ".join(f"{k}: {v}" for k, v in sorted(summary["candidate_counts"].items()))),
        ("latency (median, ms)", f"{lat['median_ms']:.2f}  [min {lat['min_ms']:.2f}, max {lat['max_ms']:.2f}, "
                                 f"{lat['repeats']} runs]"),
    ]
    if "fp32_latency_ms" in summary:
        rows.append(("TVM FP32 latency (median, ms)", f"{summary['fp32_latency_ms']['median_ms']:.2f}"))
        rows.append(("speed-up vs TVM FP32", f"{summary['speedup_vs_fp32']:.2f}x"))
    rows += [
        ("output SQNR vs float (dB)", _fmt_db(summary["sqnr_vs_float_db"])),
        ("output SQNR vs simulation (dB)", _fmt_db(summary["sqnr_vs_simulation_db"])),
    ]
    if "top1_agreement" in summary:
        rows.append(("top-1 agreement with FP32", f"{summary['top1_agreement'] * 100:.1f} % "
                                                  f"of {summary['eval_samples']} held-out samples"))
    if "top1_in_float_top5" in summary:
        rows.append(("top-1 within FP32 top-5", f"{summary['top1_in_float_top5'] * 100:.1f} %"))
    rows.append(("compile time (s)", f"{summary['timings_s']['compile_s']:.1f}"))
    if summary["float_ops"]:
        rows.append(("left in float (unsupported)", json.dumps(summary["float_ops"])))
    if "artifacts" in summary:
        rows.append(("wrote", f"{summary['artifacts']['library']}, {summary['artifacts']['plan']}, summary.json"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _cmd_layers(args) -> int:
    from .frontend import import_model
    from .hardware import load_profile
    from .models import load_model

    spec, profile = load_model(args.model), load_profile(args.hw)
    imported = import_model(spec.module, spec.example_inputs, name=spec.name,
                            unified_input_ops=profile.constraints.unified_input_ops)
    group_of = imported.graph.group_of()
    print(f"{'layer':<44} {'op':<7} {'MMACs':>9}  {'group':<32} candidates")
    for layer in imported.graph.layers.values():
        cands = ",".join(c.name for c in profile.candidates_for(layer.op_type))
        print(f"{layer.name:<44} {layer.op_type:<7} {layer.macs / 1e6:>9.2f}  {group_of[layer.name]:<32} {cands}")
    print(f"{len(imported.graph.layers)} layers, {len(imported.graph.groups)} quantizer groups, "
          f"{imported.graph.total_macs / 1e6:.1f} MMACs; left in float: {imported.graph.float_ops or 'none'}")
    return 0


class _Progress:
    """One updating stderr line: done/total, ETA, current task."""

    def __init__(self):
        self.last = 0.0

    def __call__(self, done: int, total: int, what: str, eta: float):
        import time

        now = time.monotonic()
        if done < total and now - self.last < 0.5:
            return
        self.last = now
        eta_text = "--:--" if eta != eta else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        bar = "#" * int(20 * done / max(total, 1))
        line = f"\r[{bar:<20}] {done}/{total} ETA {eta_text}  {what[:60]:<60}"
        print(line, end="" if done < total else "\n", file=sys.stderr, flush=True)


def _cmd_profile(args) -> int:
    from .measure.profiler import profile_model

    summary = profile_model(
        args.model, args.hw, store_path=args.store, rpc=args.rpc, budget_s=args.budget, device=args.device,
        progress=_Progress(), log=lambda m: print(f"[tvm-mpq] {m}", file=sys.stderr, flush=True),
        sweep=args.sweep, in_model=args.in_model,
    )
    print(f"tasks {summary['total']}: measured {summary['measured']}, already stored {summary['already_stored']}, "
          f"failed {len(summary['failed'])}, left for the budget {summary['skipped_for_budget']} "
          f"in {summary['seconds']:.0f} s")
    for failure in summary["failed"][:10]:
        print(f"  failed: {failure['task']}: {failure['error']}")
    print(f"store: {summary['store']} ({summary['layer_measurements_for_profile']} layer measurements "
          f"for {summary['profile']})")
    print(f"latency model: {summary['latency_model'] or 'not trained (too few measurements)'}")
    im = summary.get("in_model")
    if im:
        builds = ", ".join(f"{c} {ms:.2f} ms" for c, ms in im["model_ms"].items()) or "none new"
        print(f"in-model: {builds}; already stored: {', '.join(im['already_stored']) or 'none'}"
              + (f"; failed: {im['failed']}" if im["failed"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 1 if summary["failed"] or (im and im["failed"]) else 0


def _cmd_latency(args) -> int:
    from .latency import latency_report

    table, graph = latency_report(args.model, args.hw, store_path=args.store, device=args.device)
    cands = sorted({c for row in table.layers.values() for c in row}, key=list(_CANDIDATE_ORDER).index)
    mark = {"measured": " ", "predicted": "~", "roofline": "r", "in-model": "*"}
    print(f"{'layer':<44} " + " ".join(f"{c:>10}" for c in cands))
    for name, row in table.layers.items():
        cells = [f"{row[c].ms:>9.3f}{mark[row[c].source]}" if c in row else f"{'-':>10}" for c in cands]
        print(f"{name:<44} " + " ".join(cells))
    totals = {c: table.model_ms({n: (c if c in table.layers[n] else "FP32") for n in table.layers}) for c in cands}
    print(f"{'whole model (layers + converts)':<44} " + " ".join(f"{totals[c]:>9.2f} " for c in cands))
    print("ms; ' ' measured on the device, '*' measured inside the compiled model, '~' predicted by the latency "
          "model, 'r' roofline estimate "
          f"({', '.join(f'{k}: {v}' for k, v in table.sources().items())})")
    for note in table.notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(table.to_dict(), indent=2))
    return 0


def _load_calibration(path: str, spec, needed: int):
    """--calib: an .npy/.npz of input batches, or a folder of images with the model's preprocessing."""
    import numpy as np
    import torch

    p = Path(path)
    if p.is_dir():
        if spec.name != "efficientnet_lite0":
            raise ValueError(f"--calib {path}: a folder of images needs an image model with a known "
                             f"preprocessing (efficientnet_lite0); give an .npy/.npz for {spec.name}")
        from .models.efficientnet_lite0 import calibration_from_folder

        return calibration_from_folder(p, needed)
    if not p.is_file():
        raise ValueError(f"--calib {path}: no such file or folder")
    if p.suffix == ".npy":
        arrays = [np.load(p, allow_pickle=False)]
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            arrays = [z[k] for k in z.files]
    else:
        raise ValueError(f"--calib {path}: expected .npy, .npz or a folder of images")
    if len(arrays) != len(spec.example_inputs):
        raise ValueError(f"--calib {path}: {len(arrays)} array(s) but the model takes {len(spec.example_inputs)} "
                         "inputs (an .npz holds one array per input, in order)")
    count = arrays[0].shape[0] if arrays[0].ndim else 0
    samples = []
    for i in range(count):
        sample = []
        for a, example in zip(arrays, spec.example_inputs):
            if a.shape[0] != count:
                raise ValueError(f"--calib {path}: arrays disagree on the number of samples")
            sample.append(torch.from_numpy(np.ascontiguousarray(a[i:i + 1])).to(example.dtype))
        samples.append(tuple(sample))
    return samples


def _cmd_search(args) -> int:
    from .models import load_model
    from .report import write_search_outputs
    from .search.api import SearchConfig, search

    spec = load_model(args.model)
    labeled = args.metric == "labeled"
    if labeled and args.min_sqnr is not None:
        raise ValueError("--metric labeled selects by the model's labeled score: give --min-score or --max-drop "
                         "(in its unit), not --min-sqnr")
    if not labeled and args.min_score is not None:
        raise ValueError("--min-score needs --metric labeled (with output SQNR give --min-sqnr)")
    config = SearchConfig(
        calib_samples=args.calib_samples, sensitivity_samples=min(args.sensitivity_samples, args.calib_samples),
        eval_samples=args.eval_samples, range_method=args.range_method, bias_correction=not args.no_bias_correction,
        smoothing=not args.no_smoothing, order=args.order, cost=args.cost,
        min_sqnr_db=args.min_sqnr, max_drop_db=None if labeled else args.max_drop,
        min_score=args.min_score, max_score_drop=args.max_drop if labeled else None,
        latency_budget_ms=args.latency_budget, selection=args.selection, measure_points=args.measure,
    )
    calibration = None
    if args.calib:
        calibration = _load_calibration(args.calib, spec, config.calib_samples + config.eval_samples)
    progress = _Progress()
    result = search(spec, args.hw, config, calibration=calibration, store_path=args.store,
                    log=lambda m: print(f"[tvm-mpq] {m}", file=sys.stderr, flush=True),
                    progress=lambda done, total, what: progress(done, total, "phase 1: " + what, float("nan")),
                    metric=args.metric)
    key = "score" if labeled else "sqnr_db"
    extra = {k: {"cost": v["cost"], key: v[key]} for k, v in result.reference_points.items()}
    paths = write_search_outputs(result, args.out, extra)
    unit = "ms" if result.cost.unit == "ms" else "rel. BOPs"
    if labeled:
        m = result.metric
        print(f"metric: {m['name']} ({m['unit']}){': ' + m['note'] if m['note'] else ''}")
    quality = f"{result.metric['name']}" if labeled else "held-out SQNR (dB)"
    print(f"{'point':<14} {'cost (' + unit + ')':>16} {quality:>20}")
    for label, v in result.reference_points.items():
        print(f"{label:<14} {v['cost']:>16.3f} {v[key]:>20.4g}")
    sel = result.selection
    if sel is not None:
        print(f"{'selected':<14} {sel.point.cost:>16.3f} {sel.point.evaluated_sqnr_db:>20.2f}"
              f"{'' if sel.met else '   (target not met: best point returned)'}")
    if result.measured is not None:
        print(f"{'measured':<14} {'predicted (ms)':>16} {'measured (ms)':>14} {quality:>20}")
        for p in result.measured["points"]:
            m = p["measured_ms"]
            mark = "  <- chosen" if p["label"] == result.measured["chosen"] else ""
            print(f"{p['label']:<14} {p['predicted_ms']:>16.3f} {m if m is not None else float('nan'):>14.3f} "
                  f"{p['quality']:>20.4g}{mark}")
    counts: dict[str, int] = {}
    for c in result.plan.layers.values():
        counts[c] = counts.get(c, 0) + 1
    print(f"plan: {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} layers; front of "
          f"{len(result.front)} evaluated points")
    a = result.analysis
    cmp, gap, add = a["orders"]["comparison_chosen_vs_other"], a["greedy_vs_exact"], a["additive_model"]
    winner = {"a": a["orders"]["chosen"], "b": a["orders"]["other"], "tie": "neither"}[cmp["winner"]]
    print(f"front: better order by area: {winner} ({a['orders']['chosen']} better at {cmp['a_better']} "
          f"of {cmp['levels']} cost levels)")
    if gap:
        print(f"greedy vs exact optimum of the cost and noise tables: {gap['optimal_points']}/{gap['points']} points "
              f"optimal, max cost gap {gap['max_relative_gap'] * 100:.1f} %")
    if add["points"]:
        print(f"additive noise model vs evaluated SQNR: mean error {add['mean_error_db']:+.1f} dB, "
              f"max |error| {add['max_abs_error_db']:.1f} dB over {add['points']} points")
    t = result.timings
    print(f"time: calibration {t['calibrate_s']:.1f} s, phase 1 {t['phase1_s']:.1f} s, phase 2 {t['phase2_s']:.1f} s, "
          f"phase 3 {t['phase3_s']:.1f} s" + (f", measured choice {t['measure_s']:.1f} s" if "measure_s" in t else ""))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {paths['plan']}, {paths['report']}, {paths['front_plot']}, {paths['sensitivity_plot']}")
    return 0


def _cmd_store(args) -> int:
    from .hardware import HOST_PROFILE, host_profile_name
    from .measure.profiler import default_store_path
    from .store import MeasurementStore

    path = Path(args.store) if args.store else default_store_path()
    if getattr(args, "hw", None) == HOST_PROFILE:  # a profile-name filter here: the host's profile
        args.hw = host_profile_name()
    if args.action == "export":
        with MeasurementStore(path) as store:
            n = store.export_json(args.file, profile=args.hw)
        print(f"exported {n} measurements{' of ' + args.hw if args.hw else ''} from {path} to {args.file}")
    elif args.action == "import":
        path.parent.mkdir(parents=True, exist_ok=True)
        with MeasurementStore(path) as store:
            n = store.import_json(args.file)
        print(f"imported {n} measurements from {args.file} into {path}")
    else:
        if not path.exists():
            print(f"{path}: no measurements yet (run `tvm-mpq profile`)")
            return 0
        with MeasurementStore(path) as store:
            rows = store.query(profile=args.hw)
        counts: dict[tuple, int] = {}
        for m in rows:
            counts[(m.profile, m.device, m.kind)] = counts.get((m.profile, m.device, m.kind), 0) + 1
        print(f"{path}:")
        for (prof, dev, kind), n in sorted(counts.items()):
            print(f"  {prof:<20} {dev:<28} {kind:<8} {n}")
    return 0


def _cmd_models(_args) -> int:
    from .models import available_models

    for name in available_models():
        print(name)
    return 0


def _cmd_profiles(_args) -> int:
    from .hardware import available_profiles

    for name in available_profiles():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvm-mpq",
        description="Mixed-precision post-training quantization compiled by Apache TVM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="quantize a model at a plan, compile it, check and time it",
                       description="Calibrate on unlabeled data, lower the plan with QuantizeMixedPrecision, "
                                   "compile with TVM, compare against float and the fake-quant simulation, "
                                   "time it, and write DIR/model.so, DIR/plan.yaml and DIR/summary.json.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--hw", required=True, help=HW_HELP)
    p.add_argument("--plan", default="w8a8",
                   help="fp32 | fp16 | w8a8 | w4a8 | w8a16 | w4a16 (every layer where the target supports it) "
                        "or a plan YAML file (default: w8a8)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration samples (default 32)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out samples for the checks (default 16)")
    p.add_argument("--range-method", default="minmax", choices=["minmax", "percentile", "mse"],
                   help="activation range estimator (default minmax)")
    p.add_argument("--no-bias-correction", action="store_true", help=BIAS_HELP)
    p.add_argument("--no-smoothing", action="store_true", help=SMOOTHING_HELP)
    p.add_argument("--compare-fp32", action="store_true", help="also compile and time the FP32 model")
    p.add_argument("--repeat", type=int, default=10, help="timed runs of the whole model (default 10)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("search", help="choose per-group precisions: the fastest plan within a quality budget",
                       description="Phase 1: sensitivity of every quantizer group at every candidate (output SQNR "
                                   "on unlabeled calibration data); phase 2: Pareto front of quality vs device "
                                   "latency (measured, else predicted, else roofline; convert ops included); "
                                   "phase 3: the fastest point reaching --min-sqnr (or within --max-drop of a "
                                   "finite baseline), or the best within "
                                   "--latency-budget, or the whole curve; with --metric labeled phase 3 selects by "
                                   "the model's labeled score instead (--min-score, --max-drop in its unit). Writes DIR/plan.yaml (for `tvm-mpq "
                                   "compile --plan`), DIR/report.json, DIR/front.png, DIR/sensitivity.png.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--hw", required=True, help=HW_HELP)
    p.add_argument("--calib", help=".npy/.npz of input batches (first axis: samples; .npz: one array per input) "
                                   "or a folder of images; default: the model's bundled calibration set")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--min-sqnr", type=float, metavar="DB",
                        help="the fastest plan whose output SQNR vs the float model (held-out samples) is >= DB")
    budget.add_argument("--max-drop", type=float, metavar="X", help="allowed quality drop from the baseline: in dB "
                        "of SQNR when the baseline's is finite (a non-float baseline), or in the labeled score's "
                        "unit with --metric labeled (e.g. 0.01 = one accuracy point below FP32)")
    budget.add_argument("--min-score", type=float, metavar="X",
                        help="with --metric labeled: the fastest plan whose labeled score is >= X")
    budget.add_argument("--latency-budget", type=float, metavar="MS", help="best quality within this latency")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--order", default="quality_per_cost", choices=["quality_per_cost", "sensitivity"],
                   help="phase 2 move order (default: quality lost per latency saved; 'sensitivity' is the "
                        "paper's)")
    p.add_argument("--cost", default="latency", choices=["latency", "bops"],
                   help="cost of a plan: device latency (default) or BOPs (the reference implementation's)")
    p.add_argument("--selection", default="binary", choices=["binary", "interpolation", "brute"])
    p.add_argument("--measure", type=int, default=4, metavar="N",
                   help="compile and time N qualifying points (the selected one, the baseline, homogeneous "
                        "references, the cheapest front points) side by side on this machine and keep the "
                        "fastest measured (default 4; 0: trust the predicted latency)")
    p.add_argument("--metric", default="sqnr", choices=["sqnr", "labeled"],
                   help="phase 3 quality: output SQNR vs the float model on held-out samples (default), or the "
                        "model's labeled evaluator (efficientnet_lite0: top-1 on 20 labeled photos, a sanity "
                        "check; small_cnn: Fashion-MNIST test accuracy; minilm_l6: accuracy of a "
                        "logistic-regression probe on sentence embeddings)")
    p.add_argument("--calib-samples", type=int, default=256, help="samples for activation ranges (default 256)")
    p.add_argument("--sensitivity-samples", type=int, default=64,
                   help="of those, samples scored in phase 1 (default 64)")
    p.add_argument("--eval-samples", type=int, default=64, help="held-out samples scored in phase 3 (default 64)")
    p.add_argument("--range-method", default="minmax", choices=["minmax", "percentile", "mse"])
    p.add_argument("--no-bias-correction", action="store_true", help=BIAS_HELP)
    p.add_argument("--no-smoothing", action="store_true", help=SMOOTHING_HELP)
    p.add_argument("--store", help="measurement database (default: ~/.cache/tvm_mpq/measurements.sqlite)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("profile", help="measure every layer workload × candidate of a model on the device",
                       description="Compile every distinct layer workload of the model at every candidate the "
                                   "profile allows (exactly as `compile` lowers it) plus the convert ops, time "
                                   "them on the device (locally or through a TVM RPC tracker) and store the "
                                   "measurements; then train the profile's latency model. Resumes where an "
                                   "interrupted run stopped.")
    p.add_argument("--model", help=MODEL_HELP + " (optional with --sweep)")
    p.add_argument("--hw", required=True, help=HW_HELP)
    p.add_argument("--sweep", type=int, default=0, metavar="N",
                   help="also measure N model-independent workloads (conv, linear, attention shapes) that "
                        "teach the latency model the device; do it once per device")
    p.add_argument("--rpc", metavar="HOST:PORT:KEY", help="measure on devices registered with this TVM RPC tracker")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop measuring after this long; the rest "
                                                                    "is predicted by the latency model")
    p.add_argument("--store", help="measurement database (default: ~/.cache/tvm_mpq/measurements.sqlite)")
    p.add_argument("--device", help="name of the measured device (default: local:<hostname> or rpc:<key>)")
    p.add_argument("--in-model", dest="in_model", action=argparse.BooleanOptionalAction, default=None,
                   help="also compile the model once per candidate and time it layer by layer (the latency "
                        "tables then use these in-model segments; default: on for local x86_avx2 runs)")
    p.add_argument("--json", metavar="PATH", help="also write the run's summary as JSON")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("latency", help="print the per-layer × candidate latency table of a model",
                       description="Latencies per layer and candidate from the measurement store (measured), "
                                   "else the profile's latency model (predicted), else its roofline.")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--hw", required=True, help=HW_HELP)
    p.add_argument("--store", help="measurement database (default: ~/.cache/tvm_mpq/measurements.sqlite)")
    p.add_argument("--device", help="prefer measurements of this device")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    p.set_defaults(func=_cmd_latency)

    p = sub.add_parser("store", help="list, export or import measurements (to travel with a profile)")
    # one sub-command per action, so options and the file may come in any order
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,export,import}")
    for action, text in (("list", "count the stored measurements by profile, device and kind"),
                         ("export", "write measurements to a JSON-lines file"),
                         ("import", "read measurements from a JSON-lines file")):
        a = actions.add_parser(action, help=text)
        if action != "list":
            a.add_argument("file", help="JSON-lines file")
        if action != "import":
            a.add_argument("--hw", help="only this profile")
        a.add_argument("--store", help="measurement database (default: ~/.cache/tvm_mpq/measurements.sqlite)")
        a.set_defaults(func=_cmd_store, hw=None)

    p = sub.add_parser("layers", help="list the quantizable layers, workloads and quantizer groups")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--hw", default="x86_avx2", help=HW_HELP)
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("models", help="list the built-in models")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("profiles", help="list the hardware profiles")
    p.set_defaults(func=_cmd_profiles)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "action", None) in ("export", "import") and not args.file:
        parser.error(f"store {args.action} needs a FILE")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"tvm-mpq: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Search reports: JSON and PNG plots (outside the search itself, which stays pure)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def search_report(result, extra_points: dict | None = None) -> dict:
    """A JSON-ready report of a SearchResult; `extra_points`: {label: {"cost": .., "sqnr_db": ..}}."""
    sel = result.selection
    q = "evaluated_sqnr_db" if getattr(result, "metric", None) is None else "evaluated_score"
    return {
        "plan": result.plan.to_dict(),
        "cost_unit": result.cost.unit,
        "baseline_quality_db": _num(result.baseline_quality_db),
        "metric": getattr(result, "metric", None),  # None: qualities are output SQNR (dB); else this task score
        "selection": None if sel is None else {
            "met": sel.met, "message": sel.message, "evaluations": sel.evaluations,
            "cost": sel.point.cost, q: _num(sel.point.evaluated_sqnr_db),
            "predicted_sqnr_db": _num(sel.point.predicted_sqnr_db)},
        "front": [{"cost": p.cost, "predicted_sqnr_db": _num(p.predicted_sqnr_db),
                   q: _num(p.evaluated_sqnr_db), "moves": p.moves,
                   "config": dict(p.config)} for p in result.front],
        "sensitivity_db": {f"{g}|{c}": _num(v) for (g, c), v in result.sensitivity.sqnr_db.items()},
        "groups": result.group_layers,
        "extra_points": extra_points or {},
        "analysis": result.analysis,
        "measured": getattr(result, "measured", None),  # final choice on measured latency (None: predicted only)
        "timings_s": result.timings,
        "notes": result.notes,
    }


def write_search_outputs(result, out_dir, extra_points: dict | None = None) -> dict:
    """DIR/plan.yaml, DIR/report.json, DIR/front.png, DIR/sensitivity.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plan": out / "plan.yaml", "report": out / "report.json",
             "front_plot": out / "front.png", "sensitivity_plot": out / "sensitivity.png"}
    result.plan.save(paths["plan"])
    paths["report"].write_text(json.dumps(search_report(result, extra_points), indent=2, default=float))
    plot_front(result, paths["front_plot"], extra_points)
    plot_sensitivity(result, paths["sensitivity_plot"])
    return {k: str(v) for k, v in paths.items()}


def plot_front(result, path, extra_points: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in result.front if p.evaluated_sqnr_db is not None and math.isfinite(p.evaluated_sqnr_db)]
    metric = getattr(result, "metric", None)
    if metric is None:  # the additive model predicts SQNR, not a task score
        ax.plot([p.cost for p in result.front], [min(p.predicted_sqnr_db, 80) for p in result.front], ".",
                color="0.7", label="front (predicted, additive noise)")
    if pts:
        ax.plot([p.cost for p in pts], [p.evaluated_sqnr_db for p in pts], "o-", ms=3, label="front (evaluated)")
    for label, point in (extra_points or {}).items():
        quality = point.get("sqnr_db", point.get("score"))
        if quality is not None and point.get("cost") is not None:
            ax.plot(point["cost"], min(quality, 80), "s", ms=7, label=label)
            ax.annotate(label, (point["cost"], min(quality, 80)), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    measured = getattr(result, "measured", None)
    if measured:
        timed = [p for p in measured["points"] if p["measured_ms"] is not None]
        ax.plot([p["measured_ms"] for p in timed], [min(p["quality"], 80) for p in timed], "x", ms=8,
                color="black", label="measured on the device")
        for p in timed:
            ax.annotate("", (p["measured_ms"], min(p["quality"], 80)), (p["predicted_ms"], min(p["quality"], 80)),
                        arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8})
    sel = result.selection
    if sel is not None and sel.point.evaluated_sqnr_db is not None:
        ax.plot(sel.point.cost, sel.point.evaluated_sqnr_db, "*", ms=14, color="crimson", label="selected")
    ax.set_xlabel("latency (ms)" if result.cost.unit == "ms" else "relative BOPs")
    ax.set_ylabel("output SQNR vs float (dB)" if metric is None else f"{metric['name']} ({metric['unit']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result.sensitivity.groups)
    cands = sorted({c for (_, c) in result.sensitivity.sqnr_db if c != result.sensitivity.baseline})
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(groups)), 4))
    width = 0.8 / max(len(cands), 1)
    for i, c in enumerate(cands):
        ys = [result.sensitivity.sqnr_db.get((g, c), float("nan")) for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], [min(y, 80) for y in ys], width, label=c)
    ax.set_xticks([x + 0.4 for x in range(len(groups))])
    ax.set_xticklabels(groups, rotation=90, fontsize=6)
    ax.set_ylabel("output SQNR with only this group changed (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The README's end-to-end table, rendered from `benchmarks/end_to_end.py` JSON.

    python benchmarks/readme_table.py RUN.json [RERUN.json]

With a second run, the rows of models present in both show "first / second" figures, so a reader sees
how far two runs on the same host disagree. Latencies are medians of batch 1: alone (consecutive runs
of one executor) and side by side (interleaved rounds of all executors).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_PRETTY = {"efficientnet_lite0": "EfficientNet-Lite0", "minilm_l6": "MiniLM-L6 (seq 128)",
           "small_cnn": "small_cnn (Fashion-MNIST)"}


def _median(row: dict, key: str) -> float | None:
    entry = row.get(key, {}).get("1")
    return None if entry is None else entry["median_ms"]


def _quality(row: dict) -> str:
    q = row.get("quality", {})
    if q.get("sqnr_db") is None:
        return "—"
    parts = [f"{q['sqnr_db']:.1f} dB"]
    if "pooled_cosine_mean" in q:
        parts.append(f"cos {q['pooled_cosine_mean']:.4f}")
    elif "top1_agreement" in q:
        parts.append(f"top-1 {100 * q['top1_agreement']:.0f} %")
    return ", ".join(parts)


def _label(name: str, row: dict) -> str:
    """'TVM mixed latency-aware (search_minilm_l6_20db)' -> 'TVM mixed latency-aware, 20 dB (18 FP32 / 30 W8A8)'."""
    if not name.startswith("TVM mixed"):
        return name
    base = name.split(" (")[0]
    target = _target_db(row)
    target = f", {target:g} dB" if target is not None else ""
    mix = " / ".join(f"{n} {c}" for c, n in sorted(row.get("candidates", {}).items(), key=lambda kv: -kv[1]))
    return f"{base}{target} ({mix})"


def _target_db(row: dict) -> float | None:
    """The quality target the plan was searched for, from the search report beside its plan file."""
    report = Path(row.get("plan", "")).parent / "report.json"
    if not report.is_file():
        return None
    message = json.loads(report.read_text()).get("selection", {}).get("message", "")
    found = re.search(r"target (-?[\d.]+)", message)
    return float(found.group(1)) if found else None


def _fmt(values: list[float | None]) -> str:
    return " / ".join("—" if v is None else f"{v:.2f}" for v in values)


def render(runs: list[dict], bold: tuple[str, ...] = ()) -> str:
    """Markdown table: one row per (model, executor) of the first run; rows named in `bold` in bold."""
    lines = ["| model | executor | b1 alone (ms) | b1 side by side (ms) | quality |",
             "| --- | --- | --- | --- | --- |"]
    for model, entry in runs[0]["models"].items():
        first = True
        for name, row in entry["rows"].items():
            same = [r["models"][model]["rows"].get(name) for r in runs if model in r["models"]]
            same = [r for r in same if r is not None]
            alone = _fmt([_median(r, "latency_ms") for r in same])
            side = _fmt([_median(r, "latency_interleaved_ms") for r in same])
            label = _label(name, row)
            if name in bold:
                label = f"**{label}**"
            lines.append(f"| {_PRETTY.get(model, model) if first else ''} | {label} | {alone} | {side} | "
                         f"{_quality(row)} |")
            first = False
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="end_to_end.json files (first one sets the rows)")
    ap.add_argument("--bold", action="append", default=[], help="executor row to set in bold (repeatable)")
    args = ap.parse_args(argv)
    print(render([json.loads(p.read_text()) for p in args.runs], tuple(args.bold)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

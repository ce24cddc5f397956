"""Measurement database: round trip, upsert, queries, export/import, concurrent writers, kill -9 resume."""

import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tvm_mpq.store import Measurement, MeasurementStore, StoreError

STORE_PY = Path(__file__).resolve().parent.parent / "tvm_mpq" / "store.py"


def _m(i: int = 0, **kw) -> Measurement:
    base = dict(profile="x86_avx2", device="host-a", kind="layer", workload=f'{{"op":"conv2d","i":{i}}}',
                candidate="W8A8", median_ms=1.0 + i, min_ms=0.9 + i, max_ms=1.2 + i, std_ms=0.01, repeats=5,
                number=10)
    base.update(kw)
    return Measurement(**base)


def test_round_trip_and_created_at(tmp_path):
    store = MeasurementStore(tmp_path / "m.db")
    m = _m(3, tuning_trials=64, meta={"tvm": "0.27", "flags": [1, 2]})
    before = time.time()
    store.put(m)
    got = store.get(*m.key)
    assert got is not None
    assert before <= got.created_at <= time.time()
    assert got == Measurement(**{**m.to_dict(), "created_at": got.created_at})
    assert store.get("x86_avx2", "host-a", "layer", "nope", "W8A8") is None
    assert len(store) == 1
    store.close()
    # reopen: persisted, and a non-zero created_at is kept as given
    store = MeasurementStore(tmp_path / "m.db")
    assert store.get(*m.key) == got
    store.put(_m(4, created_at=123.5))
    assert store.get(*_m(4).key).created_at == 123.5
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upsert_replaces(tmp_path):
    store = MeasurementStore(tmp_path / "m.db")
    store.put(_m(0))
    store.put(_m(0, median_ms=5.0, min_ms=4.0, max_ms=6.0, meta={"rerun": True}))
    assert len(store) == 1
    got = store.get(*_m(0).key)
    assert (got.median_ms, got.min_ms, got.max_ms, got.meta) == (5.0, 4.0, 6.0, {"rerun": True})


def test_query_filters_and_keys(tmp_path):
    store = MeasurementStore(tmp_path / "m.db")
    store.put(_m(0))
    store.put(_m(0, candidate="FP32"))
    store.put(_m(1, device="host-b"))
    store.put(_m(2, profile="cuda_a100"))
    store.put(_m(0, kind="convert", workload="convert:[1,8,16,16]", candidate="FP32->W8A8"))
    store.put(_m(0, kind="model", workload="model:efficientnet_lite0", candidate="mixed:abc"))
    assert len(store) == 6
    assert len(store.query()) == 6
    assert len(store.query(profile="x86_avx2")) == 5
    assert len(store.query(profile="x86_avx2", device="host-a")) == 4
    assert [m.candidate for m in store.query(profile="x86_avx2", kind="layer", device="host-a")] == ["FP32", "W8A8"]
    assert [m.kind for m in store.query(kind="convert")] == ["convert"]
    assert store.keys("x86_avx2", device="host-a", kind="layer") == {
        (_m(0).workload, "W8A8"), (_m(0).workload, "FP32")}
    assert store.keys("x86_avx2", kind="layer") == {
        (_m(0).workload, "W8A8"), (_m(0).workload, "FP32"), (_m(1).workload, "W8A8")}
    assert store.keys("nope") == set()
    with pytest.raises(ValueError, match="unknown measurement kind"):
        store.query(kind="kernel")


@pytest.mark.parametrize("change, match", [
    (dict(median_ms=float("nan")), "median_ms must be a finite number > 0"),
    (dict(min_ms=0.0), "min_ms must be a finite number > 0"),
    (dict(max_ms=float("inf")), "max_ms must be a finite number > 0"),
    (dict(std_ms=-1.0), "std_ms must be a finite number >= 0"),
    (dict(min_ms=2.0), "min_ms <= median_ms <= max_ms"),
    (dict(kind="kernel"), "unknown measurement kind 'kernel'; allowed: layer, convert, model"),
    (dict(repeats=0), "'repeats' must be an integer >= 1"),
    (dict(source="guessed"), "unknown measurement source"),
    (dict(meta={"x": float("nan")}), "not JSON-serialisable"),
    (dict(device=""), "'device' must be a non-empty string"),
])
def test_put_validates(tmp_path, change, match):
    store = MeasurementStore(tmp_path / "m.db")
    with pytest.raises(ValueError, match=match):
        store.put(_m(0, **change))
    assert len(store) == 0


def test_export_import_between_stores(tmp_path):
    a = MeasurementStore(tmp_path / "a.db")
    for i in range(5):
        a.put(_m(i))
    a.put(_m(0, profile="other"))
    out = tmp_path / "x86.jsonl"
    assert a.export_json(out, profile="x86_avx2") == 5
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"tvm_mpq_measurements": 1} and len(lines) == 6

    b = MeasurementStore(tmp_path / "b.db")
    b.put(_m(0, median_ms=9.0, max_ms=9.5))  # replaced by the import (upsert)
    assert b.import_json(out) == 5
    assert len(b) == 5
    for m in a.query(profile="x86_avx2"):
        got = b.get(*m.key)
        assert got.source == "imported"
        assert got == Measurement(**{**m.to_dict(), "source": "imported"})
    c = MeasurementStore(tmp_path / "c.db")
    c.import_json(out, keep_source=True)
    assert {m.source for m in c.query()} == {"measured"}


def test_cli_store_export_list_import_take_options_in_any_order(tmp_path, capsys):
    """`tvm-mpq store export --hw NAME FILE` (as the README writes it) and `store export FILE --hw NAME` both
    export; `store list` counts; `store import FILE` fills another store; a missing file is refused."""
    from tvm_mpq.cli import main

    a = MeasurementStore(tmp_path / "a.db")
    for i in range(3):
        a.put(_m(i))
    a.put(_m(0, profile="other"))
    a.close()
    out1, out2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(["store", "export", "--hw", "x86_avx2", str(out1), "--store", str(tmp_path / "a.db")]) == 0
    assert main(["store", "export", str(out2), "--store", str(tmp_path / "a.db"), "--hw", "x86_avx2"]) == 0
    assert out1.read_text() == out2.read_text() and len(out1.read_text().splitlines()) == 4
    assert main(["store", "import", str(out1), "--store", str(tmp_path / "b.db")]) == 0
    assert main(["store", "list", "--store", str(tmp_path / "b.db")]) == 0
    assert "x86_avx2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["store", "export", "--store", str(tmp_path / "a.db")])


def test_import_reports_bad_line(tmp_path):
    a = MeasurementStore(tmp_path / "a.db")
    for i in range(4):
        a.put(_m(i))
    out = tmp_path / "x.jsonl"
    a.export_json(out)
    lines = out.read_text().splitlines()
    b = MeasurementStore(tmp_path / "b.db")

    bad = lines[:3] + [lines[3][:-7]] + lines[4:]  # truncated record on line 4
    (tmp_path / "bad.jsonl").write_text("\n".join(bad) + "\n")
    with pytest.raises(StoreError, match=r"bad\.jsonl:4: invalid JSON"):
        b.import_json(tmp_path / "bad.jsonl")
    assert len(b) == 0  # all or nothing

    rec = json.loads(lines[2])
    rec["median_ms"] = -1
    (tmp_path / "neg.jsonl").write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]) + "\n")
    with pytest.raises(StoreError, match=r"neg\.jsonl:3: measurement median_ms must be a finite number > 0"):
        b.import_json(tmp_path / "neg.jsonl")

    rec = json.loads(lines[1])
    rec["latency"] = 1
    (tmp_path / "extra.jsonl").write_text("\n".join(lines[:1] + [json.dumps(rec)]) + "\n")
    with pytest.raises(StoreError, match=r"extra\.jsonl:2: unknown fields \['latency'\]"):
        b.import_json(tmp_path / "extra.jsonl")

    (tmp_path / "nohdr.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(StoreError, match=r"nohdr\.jsonl:1: not a tvm_mpq measurement export"):
        b.import_json(tmp_path / "nohdr.jsonl")
    assert len(b) == 0


def test_not_a_store(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 50)
    with pytest.raises(StoreError, match="not a tvm_mpq measurement store.*not an SQLite database"):
        MeasurementStore(text)
    assert text.read_text() == "hello, this is not a database\n" * 50  # untouched

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"not a tvm_mpq measurement store.*tables \['users'\]"):
        MeasurementStore(other)
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"  # not switched to WAL either
    conn.close()

    with pytest.raises(StoreError, match="is a directory"):
        MeasurementStore(tmp_path)


# ----------------------------------------------------------------------------- concurrency


# Subprocesses load store.py by path: the package __init__ imports torch (seconds per process), which
# the store does not need. `_LOAD_STORE` defines `st`, the store module.
_LOAD_STORE = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mpq_store", STORE_PY)
st = importlib.util.module_from_spec(spec); sys.modules["mpq_store"] = st; spec.loader.exec_module(st)
"""

_SPAWN_WRITER = _LOAD_STORE + r"""
store = st.MeasurementStore(PATH)
BARRIER.wait()  # all four start writing at once
for i in range(N):
    w = '{"op":"conv2d","i":%d}' % i
    store.put(st.Measurement("x86_avx2", "dev%d" % WORKER, "layer", w, "W8A8", 1.0 + i, 0.9 + i, 1.2 + i, 0.01,
                             5, 10, meta={"worker": WORKER}))
store.close()
"""


def test_concurrent_writers(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=exec, args=(_SPAWN_WRITER, {"STORE_PY": str(STORE_PY), "PATH": path, "N": 200,
                                                            "WORKER": w, "BARRIER": barrier}))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = MeasurementStore(path)
    assert len(store) == 800
    for w in range(4):
        ms = store.query(device=f"dev{w}")
        assert len(ms) == 200 and all(m.meta == {"worker": w} for m in ms)
        assert ms == sorted(ms, key=lambda m: m.key) and {m.workload for m in ms} == {_m(i).workload for i in range(200)}
    # the writers really ran at the same time: their commit-time ranges overlap
    spans = [(min(m.created_at for m in store.query(device=f"dev{w}")),
              max(m.created_at for m in store.query(device=f"dev{w}"))) for w in range(4)]
    assert max(a for a, _ in spans) < min(b for _, b in spans), spans
    assert store.integrity_check() == "ok"


_LOOP_WRITER = _LOAD_STORE.replace("STORE_PY", "sys.argv[1]") + r"""
import time
store = st.MeasurementStore(sys.argv[2])
done = store.keys("x86_avx2", device="host-a", kind="layer")
for i in range(int(sys.argv[3])):
    w = '{"op":"conv2d","i":%d}' % i
    if (w, "W8A8") in done:
        continue
    store.put(st.Measurement("x86_avx2", "host-a", "layer", w, "W8A8", 1.0 + i, 0.9 + i, 1.2 + i, 0.01, 5, 10,
                             meta={"i": i, "pad": "x" * 2000}))
    print(w, flush=True)
    time.sleep(0.005)
"""


def test_kill9_then_resume(tmp_path):
    path = tmp_path / "run.db"
    n = 400
    cmd = [sys.executable, "-c", _LOOP_WRITER, str(STORE_PY), str(path), str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    printed = []
    try:
        while len(printed) < 40:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            printed.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    store = MeasurementStore(path)
    assert store.integrity_check() == "ok"
    assert 40 <= len(store) < n
    expected = {_m(i).workload: i for i in range(n)}
    for w in printed:
        i = expected[w]
        got = store.get("x86_avx2", "host-a", "layer", w, "W8A8")
        assert got is not None, w
        assert (got.median_ms, got.min_ms, got.max_ms, got.repeats, got.number) == (1.0 + i, 0.9 + i, 1.2 + i, 5, 10)
        assert got.meta == {"i": i, "pad": "x" * 2000} and math.isfinite(got.created_at)
    already = len(store)
    store.close()

    # A resumed writer skips what is stored and finishes the rest.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == n - already
    store = MeasurementStore(path)
    assert len(store) == n and store.integrity_check() == "ok"

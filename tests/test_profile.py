"""Profiling: tasks from the compile path, measurement into the store, resume, RPC, latency tables."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tvm_mpq.frontend import import_model
from tvm_mpq.latency import MEASURED, PREDICTED, ROOFLINE, build_table
from tvm_mpq.measure.profiler import profile_tasks
from tvm_mpq.measure.runner import LocalRunner, TimingConfig
from tvm_mpq.measure.tasks import CONVERT, LAYER, build_task_module, model_tasks
from tvm_mpq.models import load_model
from tvm_mpq.store import MeasurementStore

FAST = TimingConfig(number=2, repeat=3, min_repeat_ms=0)


@pytest.fixture(scope="module")
def tiny_graph():
    spec = load_model("tiny_cnn")
    return import_model(spec.module, spec.example_inputs).graph


def test_tasks_cover_every_distinct_workload_and_candidate(tiny_graph, x86_profile):
    tasks = model_tasks(tiny_graph, x86_profile)
    layer_tasks = [t for t in tasks if t.kind == LAYER]
    expected = {(l.workload.key(), c.name) for l in tiny_graph.layers.values()
                for c in x86_profile.candidates_for(l.op_type)}
    assert {(t.workload, t.candidate) for t in layer_tasks} == expected
    assert len(layer_tasks) == len(expected)  # no duplicates
    converts = [t for t in tasks if t.kind == CONVERT]
    assert {t.candidate for t in converts} == {"FP32->A8", "FP32->A16"}


def test_layer_task_runs_the_compile_paths_kernel(tiny_graph, x86_profile):
    import tvm
    from tvm import relax

    task = next(t for t in model_tasks(tiny_graph, x86_profile) if t.candidate == "W4A8" and t.op == "conv2d")
    mod, inputs = build_task_module(task)
    script = mod.script(show_meta=False)
    assert "qconv2d_nchw" in script and 'dtype="uint8"' in script
    assert inputs[0].dtype == np.uint8  # the input arrives quantized: the convert is its own task
    vm = relax.VirtualMachine(tvm.compile(mod, target=x86_profile.tvm_target()), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(inputs[0])).numpy()
    assert out.dtype == np.float32 and np.isfinite(out).all()


class _FlakyRunner:
    """A local runner that fails on one task: the failure is reported, the others are stored."""

    def __init__(self, fail_on: int):
        self.inner, self.timing, self.calls, self.fail_on = LocalRunner(FAST), FAST, 0, fail_on

    def run(self, library, inputs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("device unplugged")
        return self.inner.run(library, inputs)


def test_profile_stores_resumes_and_reports_failures(tiny_graph, x86_profile, tmp_path):
    tasks = model_tasks(tiny_graph, x86_profile)[:6]
    with MeasurementStore(tmp_path / "m.sqlite") as store:
        report = profile_tasks(tasks, profile=x86_profile, store=store, runner=_FlakyRunner(fail_on=2),
                               device="test-device")
        assert report.measured == 5 and len(report.failed) == 1 and "device unplugged" in report.failed[0][1]
        assert len(store.query(profile="x86_avx2", device="test-device")) == 5
        # A second run measures only what is missing.
        again = profile_tasks(tasks, profile=x86_profile, store=store, runner=LocalRunner(FAST), device="test-device")
        assert again.already_stored == 5 and again.measured == 1
        # A budget of zero seconds measures nothing and says how much it left.
        more = model_tasks(tiny_graph, x86_profile)[6:9]
        skipped = profile_tasks(more, profile=x86_profile, store=store, runner=LocalRunner(FAST),
                                device="test-device", budget_s=0.0)
        assert skipped.measured == 0 and skipped.skipped_for_budget == 3
        for m in store.query(profile="x86_avx2"):
            assert m.median_ms > 0 and m.min_ms <= m.median_ms <= m.max_ms and m.repeats == 3


def test_profiling_killed_mid_run_resumes_without_loss(tiny_graph, x86_profile, tmp_path):
    """kill -9 the CLI while it profiles; the store keeps every completed measurement; a rerun completes."""
    store = tmp_path / "m.sqlite"
    cmd = [sys.executable, "-m", "tvm_mpq.cli", "profile", "--model", "tiny_cnn", "--hw", "x86_avx2",
           "--store", str(store), "--device", "d"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        count = 0
        while time.time() < deadline and count < 4:
            time.sleep(0.5)
            if store.exists():
                with MeasurementStore(store) as s:
                    count = len(s)
        assert count >= 4, "profiling made no progress"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with MeasurementStore(store) as s:
        before = {m.key: m for m in s.query()}
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    total = len(model_tasks(tiny_graph, x86_profile))
    assert len(before) < total
    done = subprocess.run(cmd + ["--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["already_stored"] == len(before) and report["measured"] == total - len(before)
    with MeasurementStore(store) as s:
        after = {m.key: m for m in s.query() if m.kind in (LAYER, CONVERT)}
        in_model = [m for m in s.query() if m.kind == "model"]
    assert len(after) == total
    assert all(after[k] == v for k, v in before.items() if k in after)  # nothing measured was lost or redone
    assert in_model and report["in_model"]["measured"]  # then the in-model builds, on by default for x86_avx2


def test_profile_through_a_local_rpc_tracker(tiny_graph, x86_profile, tmp_path):
    from tvm_mpq.measure.rpc_local import local_rpc_cluster
    from tvm_mpq.measure.runner import RPCRunner

    tasks = model_tasks(tiny_graph, x86_profile)[:3]
    with local_rpc_cluster(num_servers=2, key="cpu") as cluster, MeasurementStore(tmp_path / "m.sqlite") as store:
        runner = RPCRunner(cluster.tracker_host, cluster.tracker_port, cluster.key, timing=FAST)
        report = profile_tasks(tasks, profile=x86_profile, store=store, runner=runner, device="rpc:cpu")
        assert report.measured == 3 and not report.failed
        stored = store.query(device="rpc:cpu")
        assert len(stored) == 3 and all(m.meta["timed_on"].startswith("rpc:cpu@") for m in stored)


def test_latency_table_sources(tiny_graph, x86_profile, tmp_path):
    from tvm_mpq.cost_model.xgb import LatencyModel
    from tvm_mpq.measure.tasks import workload_from_key
    from tvm_mpq.store import Measurement

    empty = build_table(tiny_graph, x86_profile, [])
    assert set(empty.sources()) == {ROOFLINE} and "roofline" in empty.notes[0]
    measurements, samples = [], []
    for i, t in enumerate(model_tasks(tiny_graph, x86_profile)):
        ms = 0.01 * (i + 1)
        measurements.append(Measurement("x86_avx2", "d", t.kind, t.workload, t.candidate, ms, ms, ms, 0.0, 3, 2))
        if t.kind == LAYER:
            samples.append((workload_from_key(t.workload), t.candidate, ms))
    full = build_table(tiny_graph, x86_profile, measurements)
    assert set(full.sources()) == {MEASURED}
    first = next(iter(tiny_graph.layers))
    w8 = full.layers[first]["W8A8"].ms + full.converts[first][8][0].ms
    plan = {n: "FP32" for n in tiny_graph.layers}
    fp32_total = full.model_ms(plan)
    plan[first] = "W8A8"
    assert full.model_ms(plan) == pytest.approx(fp32_total - full.layers[first]["FP32"].ms + w8)
    model = LatencyModel(profile="x86_avx2").fit(samples)
    predicted = build_table(tiny_graph, x86_profile, [m for m in measurements if m.candidate != "W4A8"], model)
    assert predicted.layers[first]["W4A8"].source == PREDICTED and predicted.layers[first]["W8A8"].source == MEASURED


def test_latency_table_ignores_measurements_of_other_kernels(tiny_graph, x86_profile):
    """A table built for the current kernels drops measurements of older kernels (and says so), so kernel
    generations never mix; measurements without a kernels record count as the first generic kernels."""
    from tvm_mpq.kernels import UNVERSIONED, kernels_id
    from tvm_mpq.store import Measurement

    current = kernels_id(x86_profile.tvm_target())
    assert current.startswith("x86_avx2/")
    task = next(t for t in model_tasks(tiny_graph, x86_profile) if t.kind == LAYER and t.candidate == "W8A8")
    old = Measurement("x86_avx2", "d", task.kind, task.workload, task.candidate, 5.0, 5.0, 5.0, 0.0, 3, 2)
    new = Measurement("x86_avx2", "d", task.kind, task.workload, task.candidate, 0.5, 0.5, 0.5, 0.0, 3, 2,
                      meta={"kernels": current})
    layer = next(n for n, l in tiny_graph.layers.items() if l.workload.key() == task.workload)
    only_old = build_table(tiny_graph, x86_profile, [old], kernels=current)
    assert only_old.layers[layer]["W8A8"].source == ROOFLINE
    assert any("other kernels" in n for n in only_old.notes)
    both = build_table(tiny_graph, x86_profile, [old, new], kernels=current)
    assert both.layers[layer]["W8A8"].source == MEASURED and both.layers[layer]["W8A8"].ms == 0.5
    legacy = build_table(tiny_graph, x86_profile, [old], kernels=UNVERSIONED)
    assert legacy.layers[layer]["W8A8"].ms == 5.0


def test_latency_table_prefers_this_device_and_names_the_others(tiny_graph, x86_profile):
    """Where two devices measured a workload the table takes the requested device's figure whatever the
    order; figures only another device measured are used, and a note names that device."""
    from tvm_mpq.store import Measurement

    tasks = [t for t in model_tasks(tiny_graph, x86_profile) if t.kind == LAYER and t.candidate == "W8A8"][:2]
    here, there = "local:a/GenuineIntel-6-143", "local:a/AuthenticAMD-25-1"
    ms = [Measurement("x86_avx2", there, tasks[0].kind, tasks[0].workload, "W8A8", 9.0, 9.0, 9.0, 0.0, 3, 2),
          Measurement("x86_avx2", here, tasks[0].kind, tasks[0].workload, "W8A8", 1.0, 1.0, 1.0, 0.0, 3, 2),
          Measurement("x86_avx2", there, tasks[1].kind, tasks[1].workload, "W8A8", 2.0, 2.0, 2.0, 0.0, 3, 2)]
    layer = {l.workload.key(): n for n, l in tiny_graph.layers.items()}
    for order in (ms, ms[::-1]):
        table = build_table(tiny_graph, x86_profile, order, device=here)
        assert table.layers[layer[tasks[0].workload]]["W8A8"].ms == 1.0
        assert table.layers[layer[tasks[1].workload]]["W8A8"].ms == 2.0
        assert any("1 of 2 measurements are from another device" in n and there in n for n in table.notes)
    alone = build_table(tiny_graph, x86_profile, ms[1:2], device=here)
    assert not any("another device" in n for n in alone.notes)


@pytest.mark.slow
def test_metaschedule_tuning_records_are_reused(tiny_graph, x86_profile, tmp_path):
    """With a tuning budget the task is tuned once; a rerun compiles from MetaSchedule's database."""
    from tvm_mpq.measure.profiler import compile_task

    task = next(t for t in model_tasks(tiny_graph, x86_profile) if t.candidate == "FP32" and t.op == "linear")
    tuning = tmp_path / "tuning"
    first = time.perf_counter()
    lib, inputs = compile_task(task, x86_profile.tvm_target(), tmp_path, 4, tuning)
    first = time.perf_counter() - first
    assert (tuning / "database_tuning_record.json").stat().st_size > 0
    again = time.perf_counter()
    lib2, _ = compile_task(task, x86_profile.tvm_target(), tmp_path, 4, tuning)
    again = time.perf_counter() - again
    assert again < first / 5
    timing = LocalRunner(FAST).run(lib2, inputs)
    assert timing.median_ms > 0

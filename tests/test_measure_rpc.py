"""Timing exported Relax libraries locally and through a real TVM RPC tracker + servers on 127.0.0.1,
including a server killed mid-measurement."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tvm_mpq.measure import LocalRunner, MeasureError, RPCRunner, Timing, TimingConfig, parse_rpc
from tvm_mpq.measure.rpc_local import local_rpc_cluster
from tvm_mpq.measure.runner import cpu_id

FAST = TimingConfig(number=5, repeat=3, warmup=1)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A 1×64×64 · 64×64 + bias Relax function, compiled for llvm and exported as a .so."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 64), "float32"))
    w = relax.Var("w", relax.TensorType((64, 64), "float32"))
    b = relax.Var("b", relax.TensorType((64,), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w))
            z = bb.emit_output(relax.op.add(y, b))
        bb.emit_func_output(z)
    path = tmp_path_factory.mktemp("measure") / "matmul_add.so"
    tvm.compile(bb.get(), tvm.target.Target({"kind": "llvm"})).export_library(str(path))
    return path


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype("float32") for s in [(1, 64, 64), (64, 64), (64,)]]


@pytest.fixture(scope="module")
def cluster():
    with local_rpc_cluster(num_servers=2, key="mpqtest") as c:
        yield c


@pytest.fixture
def two_free(cluster):
    """Every test starts with two live, free servers (a test may have killed some)."""
    alive = [i for i, p in enumerate(cluster.servers) if p.poll() is None]
    for _ in range(2 - len(alive)):
        cluster.start_server(wait=False)
    cluster.wait_free(2)
    return cluster


def _check(timing: Timing, repeat: int):
    assert len(timing.per_repeat_ms) == repeat
    assert all(math.isfinite(v) and v > 0 for v in timing.per_repeat_ms)
    assert timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.std_ms >= 0


def test_local_runner(library, inputs):
    timing = LocalRunner(FAST).run(library, inputs)
    _check(timing, FAST.repeat)
    assert timing.device == f"local:{socket.gethostname()}/{cpu_id()}"
    assert timing.median_ms < 50  # a 262k-MAC matmul


def test_cpu_id_names_vendor_family_and_model():
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
            "model name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nvendor_id\t: Other\n")
    assert cpu_id(info) == "AuthenticAMD-25-1"
    assert cpu_id("garbage without fields")  # falls back to platform, never empty
    if Path("/proc/cpuinfo").exists():  # this machine's own block parses to three fields
        assert len(cpu_id().split("-")) == 3


def test_local_runner_errors(library, inputs, tmp_path):
    with pytest.raises(MeasureError, match="does not exist"):
        LocalRunner(FAST).run(tmp_path / "missing.so", inputs)
    with pytest.raises(MeasureError, match="matmul_add.so"):
        LocalRunner(FAST).run(library, [inputs[0][:, :32], inputs[1], inputs[2]])  # wrong shape


def test_rpc_runner_measures_on_a_server(two_free, library, inputs):
    runner = RPCRunner(two_free.tracker_host, two_free.tracker_port, two_free.key, FAST, session_timeout=30)
    timing = runner.run(library, inputs)
    _check(timing, FAST.repeat)
    prefix = f"rpc:{two_free.key}@127.0.0.1:"
    assert timing.device.startswith(prefix)
    assert int(timing.device[len(prefix):]) in two_free.server_ports
    assert len(runner.attempts) == 1 and runner.attempts[0][1] is None
    two_free.wait_free(2, timeout=10)  # the server went back to the tracker after the session


def test_rpc_runner_bad_inputs_are_not_retried(two_free, library, inputs):
    runner = RPCRunner(two_free.tracker_host, two_free.tracker_port, two_free.key, FAST, max_retries=2)
    with pytest.raises(MeasureError, match="matmul_add.so") as info:
        runner.run(library, [inputs[0][:, :32], inputs[1], inputs[2]])
    assert len(runner.attempts) == 1  # the session was alive: the inputs were wrong, not the device
    assert "mismatch" in str(info.value)
    two_free.wait_free(2, timeout=10)  # the error held by `info` does not keep the session open


def test_rpc_runner_survives_server_killed_mid_measurement(two_free, library, inputs):
    cluster = two_free
    slow = TimingConfig(number=1, repeat=6, min_repeat_ms=500, warmup=1)  # >= 3 s per measurement
    runner = RPCRunner(cluster.tracker_host, cluster.tracker_port, cluster.key, slow, session_timeout=60,
                       max_retries=2, request_timeout=20)
    result: dict = {}

    def measure():
        try:
            result["timing"] = runner.run(library, inputs)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            result["error"] = err

    thread = threading.Thread(target=measure, daemon=True)
    start = time.monotonic()
    thread.start()
    while runner.current_server is None and time.monotonic() - start < 30:
        time.sleep(0.02)
    victim_addr = runner.current_server
    assert victim_addr is not None, "the runner never got a session"
    time.sleep(1.0)  # upload and load take ~0.1 s: now time_evaluator is running
    assert thread.is_alive() and runner.current_server == victim_addr
    victim = cluster.server_index(victim_addr[1])
    cluster.kill_server(victim)
    killed_at = time.monotonic()

    thread.join(timeout=60)
    assert not thread.is_alive(), "the runner hung after its server died"
    assert "error" not in result, f"runner raised {result.get('error')!r}"
    timing = result["timing"]
    _check(timing, slow.repeat)
    survivor_port = runner.attempts[-1][0][1]
    assert survivor_port != victim_addr[1] and cluster.servers[cluster.server_index(survivor_port)].poll() is None
    assert timing.device == f"rpc:{cluster.key}@127.0.0.1:{survivor_port}"
    assert [a[0][1] for a in runner.attempts] == [victim_addr[1], survivor_port]
    assert runner.attempts[0][1] and runner.attempts[1][1] is None
    # the whole measurement was redone on the survivor: at least 6 repeats of >= 0.5 s after the kill
    assert time.monotonic() - killed_at >= 6 * 0.5


def _in_flight_on(runner, thread, timeout=30.0):
    start = time.monotonic()
    while runner.current_server is None and thread.is_alive() and time.monotonic() - start < timeout:
        time.sleep(0.02)
    assert runner.current_server is not None, "the runner never got a session"
    return runner.current_server


def test_rpc_runner_abandons_a_hung_server(two_free, library, inputs):
    """A server that stops answering (SIGSTOP: sockets open, nothing read) does not hang the runner."""
    cluster = two_free
    slow = TimingConfig(number=1, repeat=4, min_repeat_ms=250, warmup=1)  # >= 1 s
    runner = RPCRunner(cluster.tracker_host, cluster.tracker_port, cluster.key, slow, session_timeout=4,
                       hang_grace=1, max_retries=1, request_timeout=20)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(timing=runner.run(library, inputs)), daemon=True)
    start = time.monotonic()
    thread.start()
    frozen_addr = _in_flight_on(runner, thread)
    time.sleep(0.5)
    frozen = cluster.server_index(frozen_addr[1])
    cluster.freeze_server(frozen)
    try:
        thread.join(timeout=30)
        assert not thread.is_alive(), "the runner hung on a frozen server"
    finally:
        cluster.kill_server(frozen)
    timing = result["timing"]
    _check(timing, slow.repeat)
    assert [a[0][1] for a in runner.attempts][0] == frozen_addr[1]
    survivor_port = runner.attempts[-1][0][1]
    assert survivor_port != frozen_addr[1]
    assert timing.device == f"rpc:{cluster.key}@127.0.0.1:{survivor_port}"
    assert "no answer from" in runner.attempts[0][1]
    assert time.monotonic() - start < 4 + 1 + 10


def test_rpc_runner_all_servers_dead_fails_fast(library, inputs):
    with local_rpc_cluster(num_servers=1, key="doomed") as cluster:
        cluster.kill_server(0)
        runner = RPCRunner(cluster.tracker_host, cluster.tracker_port, cluster.key, FAST,
                           max_retries=2, request_timeout=1.5)
        start = time.monotonic()
        with pytest.raises(MeasureError) as info:
            runner.run(library, inputs)
        elapsed = time.monotonic() - start
    assert "matmul_add.so" in str(info.value) and "3 attempts" in str(info.value)
    assert "no free 'doomed' server" in str(info.value)
    assert elapsed < 3 * 1.5 + 5
    assert len(runner.attempts) == 3


def test_rpc_runner_no_tracker(library, inputs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    runner = RPCRunner("127.0.0.1", port, "x", FAST, max_retries=1, request_timeout=2)
    start = time.monotonic()
    with pytest.raises(MeasureError, match="2 attempts"):
        runner.run(library, inputs)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("127.0.0.1:9190:local", ("127.0.0.1", 9190, "local")),
        ("  tracker.lan:9191:rasp4b ", ("tracker.lan", 9191, "rasp4b")),
        ("[::1]:9190:v6", ("::1", 9190, "v6")),
    ],
)
def test_parse_rpc_good(spec, expected):
    assert parse_rpc(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "host", "host:9190", "host:port:key", ":9190:key", "host:0:key", "host:70000:key",
             "host:9190:", "host:9190:a:b", "host:9190:a b", "[::1:9190:k", None]
)
def test_parse_rpc_bad(spec):
    with pytest.raises(ValueError, match="RPC tracker spec"):
        parse_rpc(spec)

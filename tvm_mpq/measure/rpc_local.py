"""A throwaway TVM RPC tracker and N RPC servers on 127.0.0.1, each its own subprocess (and process group).

    with local_rpc_cluster(num_servers=2, key="local") as cluster:
        RPCRunner(cluster.tracker_host, cluster.tracker_port, cluster.key).run(lib, inputs)

Why not `python -m tvm.exec.rpc_tracker` / `rpc_server`: those wrap `tvm.rpc.Tracker` / `tvm.rpc.Server`, which
start the real service in yet another `PopenWorker` process (a second `import tvm`), and a server that starts
before its tracker sleeps 5 s between connection attempts. Each child here runs the service in-process
(`PopenTrackerServerState` / `PopenRPCServerState`, what those workers run), waits for the tracker itself in
0.1 s steps, and blocks the `import torch` that tvm_ffi does eagerly (an RPC server never needs it): ~2 s to
start a child instead of ~7-10 s.

This file is also the children's entry point (`python rpc_local.py tracker|server ...`), run as a plain script
so that the children do not import the `tvm_mpq` package.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
_PORT_SPAN = 64  # a child binds the first free port of [port, port + _PORT_SPAN) and prints it


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running local tracker and its servers. `servers[i]` listens on `server_ports[i]`."""

    tracker_host: str
    tracker_port: int
    key: str
    servers: list[subprocess.Popen]
    server_ports: list[int] = field(default_factory=list)
    tracker: subprocess.Popen | None = None
    log_dir: Path | None = None
    _start_timeout: float = 60.0

    @property
    def rpc_spec(self) -> str:
        """`HOST:PORT:KEY`, what `parse_rpc` reads."""
        return f"{self.tracker_host}:{self.tracker_port}:{self.key}"

    def summary(self) -> dict:
        """The tracker's summary: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
        return tracker_summary(self.tracker_host, self.tracker_port)

    def free(self) -> int:
        """How many servers of this key the tracker holds free now."""
        return self.summary()["queue_info"].get(self.key, {}).get("free", 0)

    def wait_free(self, count: int, timeout: float | None = None) -> None:
        """Block until the tracker reports at least `count` free servers of this key."""
        deadline = time.monotonic() + (self._start_timeout if timeout is None else timeout)
        last = None
        while True:
            try:
                last = self.summary()
                if last["queue_info"].get(self.key, {}).get("free", 0) >= count:
                    return
            except OSError as err:  # tracker not listening yet
                last = err
            if time.monotonic() > deadline:
                raise TimeoutError(f"tracker {self.tracker_host}:{self.tracker_port} never had {count} free "
                                   f"'{self.key}' servers; last summary: {last!r}; logs in {self.log_dir}")
            time.sleep(0.1)

    def start_server(self, wait: bool = True) -> int:
        """Start one more server; returns its index in `servers`."""
        before = self.free()
        proc, port = _start_child(
            ["server", "--tracker", f"{self.tracker_host}:{self.tracker_port}", "--key", self.key],
            self.log_dir, f"server{len(self.servers)}", self._start_timeout,
        )
        self.servers.append(proc)
        self.server_ports.append(port)
        if wait:
            self.wait_free(before + 1)
        return len(self.servers) - 1

    def server_index(self, port: int) -> int:
        """Index of the server listening on `port`."""
        return self.server_ports.index(port)

    def kill_server(self, index: int) -> None:
        """SIGKILL server `index` and its session processes (its whole process group)."""
        _kill_group(self.servers[index])

    def freeze_server(self, index: int) -> None:
        """SIGSTOP server `index` and its session processes: up, connected, and silent (a hung device)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.servers[index].pid, signal.SIGSTOP)

    def close(self) -> None:
        for proc in self.servers:
            _kill_group(proc)
        if self.tracker is not None:
            _kill_group(self.tracker)


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """`tvm.rpc.connect_tracker(host, port).summary()` with a socket timeout (and no retry loop)."""
    import struct

    from tvm.rpc import base

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise OSError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        code, value = base.recvjson(sock)
        if code != base.TrackerCode.SUCCESS:
            raise OSError(f"tracker {host}:{port} answered {code} to SUMMARY")
        return value


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own group (start_new_session)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    else:  # the leader is gone; sweep anything it forked that is still in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()


def _start_child(args: list[str], log_dir: Path | None, name: str, timeout: float) -> tuple[subprocess.Popen, int]:
    """Start `python rpc_local.py <args> --port P`; returns the process and the port it printed once bound."""
    port = _free_port()
    log = open(log_dir / f"{name}.log", "wb") if log_dir else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()
    try:
        return proc, _read_port(proc, timeout, log_dir, name)
    except BaseException:
        _kill_group(proc)
        raise


def _read_port(proc: subprocess.Popen, timeout: float, log_dir: Path | None, name: str) -> int:
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            why = "timed out" if left <= 0 else f"exited with {proc.returncode}"
            raise RuntimeError(f"local RPC {name} {why} before binding (log: {log_dir and log_dir / (name + '.log')})")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                continue
            line += chunk
    return int(line.split()[-1])


@contextlib.contextmanager
def local_rpc_cluster(num_servers: int = 2, key: str = "local", start_timeout: float = 60.0,
                      log_dir: str | Path | None = None) -> Iterator[Cluster]:
    """A tracker and `num_servers` servers on 127.0.0.1, up and all free on entry, all killed on exit.

    Children's stderr (TVM's RPC logs) goes to `<log_dir>/{tracker,server<i>}.log` (a fresh temporary folder
    when `log_dir` is None, removed on exit).
    """
    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tvm_mpq_rpc_")
        log_dir = tmp.name
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(HOST, 0, key, [], [], None, log_dir, start_timeout)
    try:
        cluster.tracker, cluster.tracker_port = _start_child(["tracker"], log_dir, "tracker", start_timeout)
        # Servers start together (each import of tvm overlaps the others); each waits for the tracker itself.
        for _ in range(num_servers):
            cluster.start_server(wait=False)
        cluster.wait_free(num_servers)
        yield cluster
    finally:
        cluster.close()
        if tmp is not None:
            tmp.cleanup()


# ---------------------------------------------------------------------------------------------- children


def _child_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="rpc_local")
    parser.add_argument("role", choices=["tracker", "server"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracker", default=None, help="HOST:PORT (server)")
    parser.add_argument("--key", default="local")
    args = parser.parse_args(argv)

    if os.environ.get("TVM_MPQ_RPC_IMPORT_TORCH") != "1":
        sys.modules.setdefault("torch", None)  # tvm_ffi tries `import torch` eagerly; ImportError is fine there

    if args.role == "tracker":
        from tvm.rpc.tracker import PopenTrackerServerState

        state = PopenTrackerServerState(HOST, args.port, args.port + _PORT_SPAN, silent=True)
    else:
        from tvm.rpc.server import PopenRPCServerState

        thost, tport = args.tracker.rsplit(":", 1)
        tracker_addr = (thost, int(tport))
        deadline = time.monotonic() + 60
        while True:  # tvm's own connect_with_retry sleeps 5 s between tries
            try:
                socket.create_connection(tracker_addr, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        state = PopenRPCServerState(HOST, args.port, args.port + _PORT_SPAN, tracker_addr=tracker_addr,
                                    key=args.key, silent=True)
    print(state.port, flush=True)
    state.thread.join()


if __name__ == "__main__":
    _child_main(sys.argv[1:])

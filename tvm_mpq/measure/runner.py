"""Time an exported Relax library (`executable.export_library(path)`) on a device: in this process
(`LocalRunner`) or on a remote device behind a TVM RPC tracker (`RPCRunner`).

Both run the library's Relax VM function "main" statefully: inputs are placed on the device once
(`set_input`), `warmup` untimed calls follow, then TVM's `time_evaluator` times `invoke_stateful("main")`
(which itself makes one more untimed call first). Over RPC that keeps input and output tensors on the device:
nothing but the timings crosses the wire while timing.

`RPCRunner` asks the tracker for a session itself (not through `TrackerSession.request`, which blocks for
ever when no server is free and does not say which server it got), so a request has a deadline and the
timing names the server it ran on. A session that breaks mid-measurement (server killed, connection reset)
is replaced by a new one from the tracker and the whole measurement is redone; a result is returned only
when one measurement ran from upload to the last repeat on one server.
"""

from __future__ import annotations

import gc
import math
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["LocalRunner", "MeasureError", "RPCRunner", "Timing", "TimingConfig", "local_device_name", "parse_rpc"]


def cpu_id(cpuinfo: str | None = None) -> str:
    """This CPU as "vendor-family-model" from /proc/cpuinfo (e.g. "GenuineIntel-6-143", "AuthenticAMD-25-1"),
    else what `platform` says. Hostnames of cloud machines repeat across CPU kinds, so measurements are
    keyed by both."""
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    parts = [fields.get(k) for k in ("vendor_id", "cpu family", "model")]
    if all(parts):
        return "-".join(parts)
    return (platform.processor() or platform.machine() or "cpu").replace(" ", "_")


def local_device_name() -> str:
    """The device name of measurements taken in this process: "local:<hostname>/<cpu_id()>"."""
    return f"local:{socket.gethostname() or 'host'}/{cpu_id()}"


@dataclass(frozen=True)
class TimingConfig:
    """`repeat` repeats of `number` calls each (TVM's `time_evaluator`), after `warmup` untimed calls."""

    number: int = 10  # calls per repeat
    repeat: int = 5
    min_repeat_ms: int = 0  # when > 0, TVM raises `number` until one repeat lasts this long
    warmup: int = 1  # untimed calls first

    def __post_init__(self):
        if self.number < 1 or self.repeat < 1 or self.min_repeat_ms < 0 or self.warmup < 0:
            raise ValueError(f"invalid {self}: number and repeat must be >= 1, min_repeat_ms and warmup >= 0")


@dataclass(frozen=True)
class Timing:
    """Mean milliseconds per call in each repeat, and where they were measured."""

    per_repeat_ms: tuple[float, ...]
    device: str  # "local:<hostname>" or "rpc:<key>@<server host>:<port>"

    @property
    def median_ms(self) -> float:
        return float(np.median(self.per_repeat_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.per_repeat_ms))

    @property
    def max_ms(self) -> float:
        return float(max(self.per_repeat_ms))

    @property
    def std_ms(self) -> float:
        return float(np.std(self.per_repeat_ms))

    def to_dict(self) -> dict:
        return {"device": self.device, "per_repeat_ms": list(self.per_repeat_ms), "median_ms": self.median_ms,
                "min_ms": self.min_ms, "max_ms": self.max_ms, "std_ms": self.std_ms}


class MeasureError(RuntimeError):
    """A library could not be measured (bad library or inputs, or no device that stayed up long enough)."""


def parse_rpc(spec: str) -> tuple[str, int, str]:
    """`"HOST:PORT:KEY"` → `(host, port, key)`. IPv6 hosts go in brackets: `"[::1]:9190:key"`."""
    if not isinstance(spec, str):
        raise ValueError(f"RPC tracker spec must be a string 'HOST:PORT:KEY', got {spec!r}")
    text = spec.strip()
    if text.startswith("["):  # [v6addr]:port:key
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"bad RPC tracker spec {spec!r}: expected '[IPV6]:PORT:KEY'")
        host, rest = text[1:close], text[close + 2 :]
        parts = rest.split(":", 1)
    else:
        host, *parts = text.split(":", 1)
        parts = parts[0].split(":", 1) if parts else []
    if len(parts) != 2 or not host:
        raise ValueError(f"bad RPC tracker spec {spec!r}: expected 'HOST:PORT:KEY' (e.g. '127.0.0.1:9190:local')")
    port_text, key = parts
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad RPC tracker spec {spec!r}: port {port_text!r} is not an integer") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad RPC tracker spec {spec!r}: port {port} is outside 1..65535")
    if not key or any(c.isspace() for c in key) or ":" in key:
        raise ValueError(f"bad RPC tracker spec {spec!r}: key {key!r} must be non-empty, without ':' or spaces")
    return host, port, key


def _check_library(library) -> Path:
    path = Path(library)
    if not path.is_file():
        raise MeasureError(f"library {path} does not exist")
    return path


def _measure_vm(vm, dev, args, timing: TimingConfig) -> tuple[float, ...]:
    """Inputs already on `dev`; returns mean ms per call of each repeat."""
    vm.set_input("main", *args)
    for _ in range(timing.warmup):
        vm.invoke_stateful("main")
    ftimer = vm.time_evaluator("invoke_stateful", dev, number=timing.number, repeat=timing.repeat,
                               min_repeat_ms=timing.min_repeat_ms)
    seconds = ftimer("main").results
    ms = tuple(float(s) * 1e3 for s in seconds)
    if len(ms) != timing.repeat or not all(math.isfinite(v) and v >= 0 for v in ms):
        raise MeasureError(f"time_evaluator returned {ms!r} for {timing.repeat} repeats")
    return ms


class LocalRunner:
    """Loads the library into this process and times "main" on the local CPU."""

    def __init__(self, timing: TimingConfig = TimingConfig()):
        self.timing = timing

    def run(self, library: Path, inputs: Sequence[np.ndarray]) -> Timing:
        import tvm

        path = _check_library(library)
        try:
            dev = tvm.cpu(0)
            vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(path)), dev)
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
            ms = _measure_vm(vm, dev, args, self.timing)
        except MeasureError:
            raise
        except Exception as err:  # TVMError subclasses are RuntimeError/ValueError/...
            raise MeasureError(f"measuring {path} locally failed: {type(err).__name__}: {err}") from err
        return Timing(ms, local_device_name())


class _SessionLost(Exception):
    """The session or its server went away; another server may succeed."""


class RPCRunner:
    """Times a library on a device of kind `key`, taking a session from the RPC tracker per measurement.

    Attempts: 1 + `max_retries`; each takes a fresh session from the tracker. Every phase is bounded:
    - waiting for a free server: `request_timeout` (the tracker queues requests while all servers are busy);
    - the session: `session_timeout` is sent to the server, which ends a longer session (that error is not
      retried: the same measurement would outlast it again); and should the server stop answering at all
      (host frozen, network gone: TVM's RPC client has no receive timeout and would block for ever), the
      session is abandoned `hang_grace` seconds after `session_timeout` and the next attempt starts.
      `session_timeout=0` means no limit on either side.

    `current_server` is the (host, port) of the session in flight; `attempts` lists (server, error) per
    attempt of the last `run` (error None for the attempt that returned).
    """

    def __init__(self, tracker_host: str, tracker_port: int, key: str, timing: TimingConfig = TimingConfig(),
                 session_timeout: float = 60, max_retries: int = 2, priority: int = 1,
                 request_timeout: float = 60, hang_grace: float = 10):
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if session_timeout < 0 or request_timeout <= 0 or hang_grace < 0:
            raise ValueError("session_timeout, hang_grace must be >= 0 and request_timeout > 0")
        self.tracker_host = tracker_host
        self.tracker_port = int(tracker_port)
        self.key = key
        self.timing = timing
        self.session_timeout = session_timeout
        self.max_retries = max_retries
        self.priority = priority
        self.request_timeout = request_timeout
        self.hang_grace = hang_grace
        self._lock = threading.Lock()
        self._in_flight: tuple[object, tuple[str, int]] | None = None
        self.attempts: list[tuple[tuple[str, int] | None, str | None]] = []

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> "RPCRunner":
        host, port, key = parse_rpc(spec)
        return cls(host, port, key, **kwargs)

    @property
    def current_server(self) -> tuple[str, int] | None:
        with self._lock:
            return self._in_flight[1] if self._in_flight else None

    # -- tracker ---------------------------------------------------------------------------------------

    def _request_server(self) -> tuple[str, int, str]:
        """Ask the tracker for a free server: (host, port, match key). Raises _SessionLost on timeout."""
        from tvm.rpc import base

        try:
            with socket.create_connection((self.tracker_host, self.tracker_port),
                                          timeout=min(10.0, self.request_timeout)) as sock:
                sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                    raise _SessionLost(f"{self.tracker_host}:{self.tracker_port} is not a TVM RPC tracker")
                sock.settimeout(self.request_timeout)
                base.sendjson(sock, [base.TrackerCode.REQUEST, self.key, "", self.priority])
                value = base.recvjson(sock)
        except socket.timeout as err:
            raise _SessionLost(f"no free '{self.key}' server from tracker {self.tracker_host}:{self.tracker_port} "
                               f"within {self.request_timeout:g} s") from err
        except OSError as err:
            raise _SessionLost(f"tracker {self.tracker_host}:{self.tracker_port}: {err}") from err
        if value[0] != base.TrackerCode.SUCCESS:
            raise _SessionLost(f"tracker answered {value!r}")
        url, port, matchkey = value[1]
        return url, int(port), matchkey

    # -- one attempt -----------------------------------------------------------------------------------

    def _attempt(self, path: Path, inputs: Sequence[np.ndarray]) -> Timing:
        host, port, matchkey = self._request_server()
        token = object()
        with self._lock:
            self._in_flight = (token, (host, port))
        self.attempts.append(((host, port), None))
        try:
            if not self.session_timeout:
                return self._session(path, inputs, host, port, matchkey)
            box: dict = {}

            def target():
                try:
                    box["timing"] = self._session(path, inputs, host, port, matchkey)
                except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                    box["error"] = err

            worker = threading.Thread(target=target, name=f"rpc-measure-{host}:{port}", daemon=True)
            worker.start()
            limit = self.session_timeout + self.hang_grace
            worker.join(limit)
            if worker.is_alive():  # blocked in the RPC client; it wakes (and ends) if the socket ever breaks
                raise _SessionLost(f"no answer from {host}:{port} within {limit:g} s (session_timeout "
                                   f"{self.session_timeout:g} s + {self.hang_grace:g} s); session abandoned")
            error, timing = box.pop("error", None), box.pop("timing", None)
            if error is not None:
                try:
                    raise error
                finally:
                    error = None  # no frame -> exception -> traceback -> frame cycle keeping the session open
            return timing
        finally:
            with self._lock:
                if self._in_flight and self._in_flight[0] is token:
                    self._in_flight = None

    def _session(self, path: Path, inputs: Sequence[np.ndarray], host: str, port: int, matchkey: str) -> Timing:
        import tvm
        from tvm import rpc

        sess = lib = vm = dev = args = None
        try:
            try:
                sess = rpc.connect(host, port, matchkey, session_timeout=self.session_timeout)
            except Exception as err:  # stale tracker entry: that server just died
                raise _SessionLost(f"connect to {host}:{port}: {err}") from err.with_traceback(None)
            try:
                sess.upload(str(path), path.name)  # each session has its own working folder on the server
                lib = sess.load_module(path.name)
                dev = sess.cpu(0)
                vm = tvm.runtime.vm.VirtualMachine(lib, dev)
                args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
                ms = _measure_vm(vm, dev, args, self.timing)
            except MeasureError:
                raise
            except Exception as err:
                # Keep the cause, not its traceback: its frames hold `vm`, `args` (remote objects), which would
                # keep this session (and the server) busy for as long as the caller holds the error.
                err = err.with_traceback(None)
                text = f"{type(err).__name__}: {err}"
                if "RPCSessionTimeoutError" in text:
                    raise MeasureError(
                        f"measuring {path} on {self.key}@{host}:{port} outlasted session_timeout="
                        f"{self.session_timeout:g} s; raise it or lower number/repeat/min_repeat_ms") from err
                if _alive(sess):  # the session works: the library or its inputs are at fault, not the device
                    raise MeasureError(f"measuring {path} on {self.key}@{host}:{port} failed: {text}") from err
                raise _SessionLost(f"session with {host}:{port} broke: {text}") from err
            return Timing(ms, f"rpc:{self.key}@{host}:{port}")
        finally:
            del args, vm, lib, dev, sess  # remote objects first, then the session (closes the connection)
            gc.collect()

    # -- public ----------------------------------------------------------------------------------------

    def run(self, library: Path, inputs: Sequence[np.ndarray]) -> Timing:
        """Measure "main" of `library` on `inputs` on one server; MeasureError when no attempt completes."""
        path = _check_library(library)
        self.attempts = []
        last: BaseException | None = None
        for _ in range(1 + self.max_retries):
            before = len(self.attempts)
            try:
                return self._attempt(path, inputs)
            except _SessionLost as err:
                last = err
                if len(self.attempts) > before:
                    self.attempts[-1] = (self.attempts[-1][0], str(err))
                else:  # no server was handed out
                    self.attempts.append((None, str(err)))
        raise MeasureError(f"measuring {path} on '{self.key}' via tracker {self.tracker_host}:{self.tracker_port} "
                           f"failed after {1 + self.max_retries} attempts; last error: {last}") from last


def _alive(sess) -> bool:
    """Whether an RPC session still answers: a 1-element tensor allocated on the server and read back.
    (`dev.exist` is no probe: it stays True after the server is gone.)"""
    import tvm

    try:
        probe = tvm.runtime.tensor(np.ones(1, "float32"), sess.cpu(0))
        return bool(probe.numpy()[0] == 1.0)
    except Exception:
        return False

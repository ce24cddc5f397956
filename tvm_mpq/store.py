"""The measurement database: latencies of layers, convert ops and whole models, per profile and device.

Storage is one SQLite file in WAL (write-ahead log) mode. Why SQLite/WAL and not a JSON file:

- **Concurrent writers.** Several profiling processes (one per device, or a pool on one host) write
  into the same file. WAL lets readers run while one writer commits, and the busy timeout makes a
  writer that finds the file locked wait for its turn instead of failing.
- **Atomic per-row commits.** Every `put` is one transaction, committed with ``synchronous=FULL``
  before it returns; a process killed with ``kill -9`` (or a power cut) loses at most the row it was
  writing, never a committed one, and never leaves a half-written row or a corrupt file.
  A long profiling run can therefore resume: `MeasurementStore.keys` says what is already measured.
- **Queries by profile / device / kind** without loading everything; an index on the primary key
  ``(profile, device, kind, workload, candidate)`` makes the upsert and the resume check cheap.

Nothing is unpickled: rows are plain columns, ``meta`` is JSON. `export_json` / `import_json` move
measurements between stores (JSON lines, validated line by line on import).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Optional

__all__ = [
    "SCHEMA_VERSION",
    "EXPORT_FORMAT_VERSION",
    "KINDS",
    "SOURCES",
    "StoreError",
    "Measurement",
    "MeasurementStore",
]

SCHEMA_VERSION = 1
EXPORT_FORMAT_VERSION = 1
EXPORT_HEADER_KEY = "tvm_mpq_measurements"
APP_ID = "tvm_mpq.measurements"
KINDS = ("layer", "convert", "model")
SOURCES = ("measured", "imported")
DEFAULT_BUSY_TIMEOUT_S = 60.0

_KEY_FIELDS = ("profile", "device", "kind", "workload", "candidate")
_COLUMNS = (
    "profile", "device", "kind", "workload", "candidate", "median_ms", "min_ms", "max_ms", "std_ms",
    "repeats", "number", "tuning_trials", "source", "meta", "created_at",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    app TEXT NOT NULL,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS measurements (
    profile TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
    workload TEXT NOT NULL,
    candidate TEXT NOT NULL,
    median_ms REAL NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    std_ms REAL NOT NULL,
    repeats INTEGER NOT NULL,
    number INTEGER NOT NULL,
    tuning_trials INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT 'measured',
    meta TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL,
    PRIMARY KEY (profile, device, kind, workload, candidate)
);
CREATE INDEX IF NOT EXISTS measurements_by_device ON measurements (device, kind);
"""


class StoreError(ValueError):
    """A measurement store file or an export file is not what it should be."""


@dataclass(frozen=True)
class Measurement:
    """One timed item. The key is (profile, device, kind, workload, candidate)."""

    profile: str  # hardware profile name
    device: str  # which device measured it (hostname, RPC key/host, ...)
    kind: str  # "layer" | "convert" | "model"
    workload: str  # Workload.key() for layers; a key string for converts/models
    candidate: str  # candidate name, e.g. "W8A8"; for converts e.g. "FP32->W8A8"
    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    repeats: int
    number: int
    tuning_trials: int = 0
    source: str = "measured"  # "measured" | "imported"
    meta: dict = field(default_factory=dict)  # stored as JSON
    created_at: float = 0.0  # set on put if 0

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.profile, self.device, self.kind, self.workload, self.candidate)

    def to_dict(self) -> dict:
        return asdict(self)


_FIELD_NAMES = tuple(f.name for f in fields(Measurement))
_REQUIRED_FIELDS = tuple(
    f.name for f in fields(Measurement) if f.name not in ("tuning_trials", "source", "meta", "created_at")
)


# ----------------------------------------------------------------------------- validation


def _check_str(m: Measurement, name: str) -> None:
    v = getattr(m, name)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"measurement field {name!r} must be a non-empty string, got {v!r}")


def _check_time(m: Measurement, name: str, *, allow_zero: bool = False) -> None:
    v = getattr(m, name)
    ok_type = isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok_type or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(
            f"measurement {name} must be {need} (milliseconds), got {v!r} "
            f"for {m.kind} {m.candidate} on {m.device}; a failed or empty timing must not be stored"
        )


def _check_int(m: Measurement, name: str, minimum: int) -> None:
    v = getattr(m, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"measurement field {name!r} must be an integer >= {minimum}, got {v!r}")


def validate(m: Measurement) -> Measurement:
    """Check `m`'s values; return it with `created_at` filled in. Raises ValueError."""
    if not isinstance(m, Measurement):
        raise TypeError(f"expected a Measurement, got {type(m).__name__}")
    for name in _KEY_FIELDS:
        _check_str(m, name)
    if m.kind not in KINDS:
        raise ValueError(f"unknown measurement kind {m.kind!r}; allowed: {', '.join(KINDS)}")
    for name in ("median_ms", "min_ms", "max_ms"):
        _check_time(m, name)
    _check_time(m, "std_ms", allow_zero=True)
    tol = 1e-9 * max(m.max_ms, 1e-300)
    if not (m.min_ms <= m.median_ms + tol and m.median_ms <= m.max_ms + tol):
        raise ValueError(
            f"measurement times out of order: need min_ms <= median_ms <= max_ms, got "
            f"min={m.min_ms!r}, median={m.median_ms!r}, max={m.max_ms!r}"
        )
    _check_int(m, "repeats", 1)
    _check_int(m, "number", 1)
    _check_int(m, "tuning_trials", 0)
    if m.source not in SOURCES:
        raise ValueError(f"unknown measurement source {m.source!r}; allowed: {', '.join(SOURCES)}")
    if not isinstance(m.meta, dict):
        raise ValueError(f"measurement meta must be a dict (stored as JSON), got {type(m.meta).__name__}")
    try:
        json.dumps(m.meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"measurement meta is not JSON-serialisable: {e}") from None
    _check_time(m, "created_at", allow_zero=True)
    if m.created_at == 0:
        m = replace(m, created_at=time.time())
    return m


def _row(m: Measurement) -> tuple:
    return (
        m.profile, m.device, m.kind, m.workload, m.candidate, float(m.median_ms), float(m.min_ms),
        float(m.max_ms), float(m.std_ms), int(m.repeats), int(m.number), int(m.tuning_trials), m.source,
        json.dumps(m.meta, allow_nan=False, sort_keys=True), float(m.created_at),
    )


def _from_row(row: sqlite3.Row | tuple) -> Measurement:
    values = dict(zip(_COLUMNS, row))
    values["meta"] = json.loads(values["meta"])
    return Measurement(**values)


# ----------------------------------------------------------------------------- the store


class MeasurementStore:
    """A measurement database file (SQLite, WAL). Safe to share between processes.

    One instance holds one connection; it may be used from several threads (calls are serialised)
    and survives a fork (the child opens its own connection on first use).
    """

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        self.path = Path(path).expanduser()
        self.timeout_s = float(timeout_s)
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a measurement store file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: Optional[sqlite3.Connection] = None
        self._pid = -1
        self._open()

    # -- connection

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write below is an explicit
        # BEGIN IMMEDIATE ... COMMIT, so the write lock is taken up front (no deadlock upgrade).
        conn = sqlite3.connect(str(self.path), timeout=self.timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        return conn

    def _open(self) -> None:
        conn = self._connect()
        try:
            self._init_schema(conn)
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode!r}); "
                                 "is it on a network file system?")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()

    def _retry(self, fn):
        """Run `fn`, retrying while the database is locked (changing journal mode ignores busy_timeout)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        not_a_store = (f"{self.path}: not a tvm_mpq measurement store; point at a new file or at a store "
                       f"created by tvm_mpq.store.MeasurementStore")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{not_a_store} (not an SQLite database: {e})") from None
        if not tables:
            # New (or empty) file: create the schema. BEGIN IMMEDIATE serialises concurrent creators;
            # the IF NOT EXISTS / version check makes the second one a no-op.
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                    conn.execute("INSERT INTO schema_version (app, version) VALUES (?, ?)", (APP_ID, SCHEMA_VERSION))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables or "measurements" not in tables:
            raise StoreError(f"{not_a_store} (an SQLite database with tables {sorted(tables)})")
        rows = conn.execute("SELECT app, version FROM schema_version").fetchall()
        if len(rows) != 1 or rows[0][0] != APP_ID:
            raise StoreError(f"{not_a_store} (schema_version table holds {rows!r})")
        version = rows[0][1]
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: measurement store schema version {version} is not supported by this tvm_mpq "
                f"(supports {SCHEMA_VERSION}); use the tvm_mpq version that wrote it, or export/import"
            )

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # closed, or inherited across fork: an SQLite connection must not cross a fork
            self._conn = None
            self._open()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "MeasurementStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MeasurementStore({str(self.path)!r})"

    # -- writing

    def _write(self, rows: list[tuple]) -> None:
        sql = (
            f"INSERT INTO measurements ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
            f"ON CONFLICT ({', '.join(_KEY_FIELDS)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in _KEY_FIELDS)
        )
        with self._lock:
            conn = self.conn
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def put(self, m: Measurement) -> None:
        """Insert or replace the measurement with `m`'s key; committed when this returns."""
        self._write([_row(validate(m))])

    def put_many(self, ms: Iterable[Measurement]) -> int:
        """Upsert several measurements in one transaction (all or none). Returns the count."""
        rows = [_row(validate(m)) for m in ms]
        if rows:
            self._write(rows)
        return len(rows)

    def delete(self, profile: str, device: str, kind: str, workload: str, candidate: str) -> bool:
        with self._lock:
            cur = self.conn.execute(
                "DELETE FROM measurements WHERE profile = ? AND device = ? AND kind = ? AND workload = ? "
                "AND candidate = ?", (profile, device, kind, workload, candidate))
            return cur.rowcount > 0

    # -- reading

    def get(self, profile: str, device: str, kind: str, workload: str, candidate: str) -> Optional[Measurement]:
        with self._lock:
            row = self.conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM measurements WHERE profile = ? AND device = ? AND kind = ? "
                "AND workload = ? AND candidate = ?", (profile, device, kind, workload, candidate)).fetchone()
        return None if row is None else _from_row(row)

    @staticmethod
    def _where(profile, device, kind) -> tuple[str, list]:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown measurement kind {kind!r}; allowed: {', '.join(KINDS)}")
        clauses, args = [], []
        for col, val in (("profile", profile), ("device", device), ("kind", kind)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, profile: Optional[str] = None, device: Optional[str] = None,
              kind: Optional[str] = None) -> list[Measurement]:
        """Measurements matching every filter given, ordered by key."""
        where, args = self._where(profile, device, kind)
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM measurements{where} ORDER BY {', '.join(_KEY_FIELDS)}",
                args).fetchall()
        return [_from_row(r) for r in rows]

    def keys(self, profile: str, device: Optional[str] = None, kind: Optional[str] = None) -> set[tuple[str, str]]:
        """{(workload, candidate)} already measured for `profile` (and device / kind): what a resumed run skips."""
        where, args = self._where(profile, device, kind)
        with self._lock:
            rows = self.conn.execute(f"SELECT workload, candidate FROM measurements{where}", args).fetchall()
        return {(w, c) for w, c in rows}

    def devices(self, profile: Optional[str] = None) -> list[str]:
        where, args = self._where(profile, None, None)
        with self._lock:
            rows = self.conn.execute(f"SELECT DISTINCT device FROM measurements{where} ORDER BY device", args)
            return [r[0] for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: "ok" for a sound file."""
        with self._lock:
            return "; ".join(r[0] for r in self.conn.execute("PRAGMA integrity_check"))

    # -- exchange

    def export_json(self, path: str | os.PathLike, profile: Optional[str] = None) -> int:
        """Write measurements (all, or of one profile) as JSON lines after a header line
        ``{"tvm_mpq_measurements": 1}``. Written to a temporary file, then renamed. Returns the count."""
        path = Path(path).expanduser()
        ms = self.query(profile=profile)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps({EXPORT_HEADER_KEY: EXPORT_FORMAT_VERSION}) + "\n")
                for m in ms:
                    f.write(json.dumps(m.to_dict(), allow_nan=False, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return len(ms)

    def import_json(self, path: str | os.PathLike, *, keep_source: bool = False) -> int:
        """Read a file written by `export_json`, validate every record, then upsert all in one
        transaction (a bad line imports nothing). Records are marked ``source="imported"`` (their
        `device` still says where they were measured); ``keep_source=True`` keeps a record's own
        source (restoring a backup). Returns the count."""
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: cannot read measurement export: {e}") from None
        lines = text.splitlines()
        if not lines:
            raise StoreError(f"{path}: empty file; expected a header line {{\"{EXPORT_HEADER_KEY}\": "
                             f"{EXPORT_FORMAT_VERSION}}} and one JSON record per line")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or EXPORT_HEADER_KEY not in header:
            raise StoreError(f"{path}:1: not a tvm_mpq measurement export (first line must be "
                             f"{{\"{EXPORT_HEADER_KEY}\": {EXPORT_FORMAT_VERSION}}})")
        if header[EXPORT_HEADER_KEY] != EXPORT_FORMAT_VERSION:
            raise StoreError(f"{path}:1: export format version {header[EXPORT_HEADER_KEY]!r} not supported "
                             f"(supports {EXPORT_FORMAT_VERSION})")
        records = []
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            records.append(_parse_record(line, f"{path}:{lineno}", keep_source))
        return self.put_many(records)


def _parse_record(line: str, where: str, keep_source: bool) -> Measurement:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise StoreError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise StoreError(f"{where}: expected a JSON object (one measurement), got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(_FIELD_NAMES))
    if unknown:
        raise StoreError(f"{where}: unknown fields {unknown}; allowed: {', '.join(_FIELD_NAMES)}")
    missing = [k for k in _REQUIRED_FIELDS if k not in rec]
    if missing:
        raise StoreError(f"{where}: missing fields {missing}")
    if not keep_source or "source" not in rec:
        rec["source"] = "imported"
    for name in ("median_ms", "min_ms", "max_ms", "std_ms", "created_at"):
        if isinstance(rec.get(name), int) and not isinstance(rec.get(name), bool):
            rec[name] = float(rec[name])
    try:
        return validate(Measurement(**rec))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: {e}") from None

"""Hardware profiles: YAML descriptions of a deployment target, loaded into frozen dataclasses.

A profile says which TVM target to compile for, which precision candidates each op type may use
(in priority order), the constraints the quantizer must honour, how to measure latency, and a
roofline for latency estimates. Schema version 1::

    schema_version: 1                       # required, must be 1
    name: x86_avx2                          # required
    description: ...                        # optional text
    target: {kind: llvm, mcpu: core-avx2}   # required, TVM target in JSON dict form ("kind" required)
    host: null                              # optional host target (null: same as target)
    candidates:                             # required: op type -> candidate names (numerics.CANDIDATES)
      conv2d: [W8A8, W4A8, W8A16, FP32]     #   op types: conv2d, linear, matmul
      linear: [W8A8, W4A8, W8A16, FP32]
      matmul: [W8A8, W8A16, FP32]           #   activation x activation: no 4-bit weight candidates
    constraints: {unified_input_ops: [], int4_channel_multiple: 1}       # optional
    measure: {number: 10, repeat: 5, min_repeat_ms: 50, tuning_trials: 0} # optional
    rpc_key: null                           # optional RPC tracker key (null: measure locally)
    roofline: {peak_gops: {FP32: 150, W8A8: 300}, memory_gbps: 40}       # optional

Every validation error is a `ProfileError` naming the file, the field and the allowed values.
`import tvm` is slow, so it happens only inside `HardwareProfile.tvm_target`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from . import numerics

__all__ = [
    "SCHEMA_VERSION",
    "OP_TYPES",
    "UNIFIED_INPUT_OP_TYPES",
    "ProfileError",
    "Constraints",
    "MeasureConfig",
    "Roofline",
    "HardwareProfile",
    "profile_dirs",
    "available_profiles",
    "resolve_profile_path",
    "load_profile",
    "profile_from_dict",
]

SCHEMA_VERSION = 1
OP_TYPES = ("conv2d", "linear", "matmul")
# ops that may be declared as needing one shared quantizer on all their inputs
UNIFIED_INPUT_OP_TYPES = ("add", "sub", "mul", "concat")
PROFILES_ENV = "TVM_MPQ_PROFILES"
DEFAULT_PROFILES_DIR = Path(__file__).resolve().parent.parent / "hw_profiles"

_TOP_KEYS = {
    "schema_version": True,  # key -> required
    "name": True,
    "description": False,
    "target": True,
    "host": False,
    "candidates": True,
    "constraints": False,
    "measure": False,
    "rpc_key": False,
    "roofline": False,
}


class ProfileError(ValueError):
    """A hardware profile is missing, malformed or invalid."""


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Constraints:
    unified_input_ops: tuple[str, ...] = ()
    int4_channel_multiple: int = 1

    def to_dict(self) -> dict:
        return {"unified_input_ops": list(self.unified_input_ops), "int4_channel_multiple": self.int4_channel_multiple}


@dataclass(frozen=True)
class MeasureConfig:
    number: int = 10
    repeat: int = 5
    min_repeat_ms: int = 50
    tuning_trials: int = 0

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "repeat": self.repeat,
            "min_repeat_ms": self.min_repeat_ms,
            "tuning_trials": self.tuning_trials,
        }


@dataclass(frozen=True)
class Roofline:
    peak_gops: dict[str, float] = field(default_factory=dict)  # candidate name -> peak giga-ops/s
    memory_gbps: Optional[float] = None

    def peak_for(self, candidate_name: str) -> Optional[float]:
        """Peak throughput of `candidate_name` (GOP/s), or None when the profile gives none."""
        return self.peak_gops.get(candidate_name.upper())

    def to_dict(self) -> dict:
        return {"peak_gops": dict(self.peak_gops), "memory_gbps": self.memory_gbps}


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    target: dict[str, Any]
    host: Optional[dict[str, Any]]
    candidates: dict[str, tuple[str, ...]]
    constraints: Constraints
    measure: MeasureConfig
    rpc_key: Optional[str]
    roofline: Optional[Roofline]
    source: Optional[Path] = None

    def tvm_target(self):
        """The `tvm.target.Target` (with its host, when one is given)."""
        import tvm  # slow: import only when needed

        if self.host is not None:
            return tvm.target.Target(dict(self.target), host=tvm.target.Target(dict(self.host)))
        return tvm.target.Target(dict(self.target))

    def candidates_for(self, op_type: str) -> tuple[numerics.Candidate, ...]:
        """Supported candidates of `op_type` in priority order; an op type not listed → (FP32,)."""
        names = self.candidates.get(op_type)
        if not names:
            return (numerics.get_candidate("FP32"),)
        return tuple(numerics.get_candidate(n) for n in names)

    def supports(self, op_type: str, candidate_name: str) -> bool:
        key = candidate_name.upper()
        return any(c.name == key for c in self.candidates_for(op_type))

    def to_dict(self) -> dict:
        """The profile as schema-version-1 data (loads back with `profile_from_dict`)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "target": dict(self.target),
            "host": dict(self.host) if self.host is not None else None,
            "candidates": {k: list(v) for k, v in self.candidates.items()},
            "constraints": self.constraints.to_dict(),
            "measure": self.measure.to_dict(),
            "rpc_key": self.rpc_key,
            "roofline": self.roofline.to_dict() if self.roofline is not None else None,
        }


# ----------------------------------------------------------------------------- validation


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, fld: str, msg: str) -> ProfileError:
        return ProfileError(f"{self.source}: field '{fld}': {msg}")

    def mapping(self, value, fld: str, keys: dict[str, bool]) -> dict:
        """`value` must be a mapping with only `keys` (key -> required)."""
        if not isinstance(value, dict):
            raise self.fail(fld, f"expected a mapping with keys {', '.join(keys)}, got {_tname(value)}")
        for k in value:
            if k not in keys:
                raise self.fail(
                    f"{fld}.{k}" if fld else str(k), f"unknown key {k!r}; allowed: {', '.join(keys)}"
                )
        for k, required in keys.items():
            if required and k not in value:
                raise self.fail(f"{fld}.{k}" if fld else k, "missing required field")
        return value

    def string(self, value, fld: str, *, optional: bool = False) -> Optional[str]:
        if value is None and optional:
            return None
        if not isinstance(value, str) or (not optional and not value.strip()):
            raise self.fail(fld, f"expected a{'' if optional else ' non-empty'} string"
                            f"{' or null' if optional else ''}, got {_tname(value)}")
        return value

    def integer(self, value, fld: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(fld, f"expected an integer >= {minimum}, got {_tname(value)}")
        if value < minimum:
            raise self.fail(fld, f"expected an integer >= {minimum}, got {value}")
        return value

    def positive_number(self, value, fld: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.fail(fld, f"expected a positive number, got {value!r}")
        return float(value)

    def candidate_name(self, value, fld: str) -> str:
        known = ", ".join(numerics.CANDIDATES)
        if not isinstance(value, str) or value.upper() not in numerics.CANDIDATES:
            raise self.fail(fld, f"unknown candidate {value!r}; allowed: {known}")
        return value.upper()

    def target(self, value, fld: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(fld, f"expected a TVM target in JSON dict form (e.g. {{kind: llvm}}), got {_tname(value)}")
        if "kind" not in value:
            raise self.fail(f"{fld}.kind", "missing required field (the TVM target kind, e.g. llvm, cuda)")
        if not isinstance(value["kind"], str) or not value["kind"]:
            raise self.fail(f"{fld}.kind", f"expected a target kind string (e.g. llvm, cuda), got {value['kind']!r}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(fld, f"target attribute names must be strings, got {k!r}")
        return dict(value)


def _tname(value) -> str:
    return "null" if value is None else type(value).__name__


def profile_from_dict(data: Any, source: str | os.PathLike | None = None) -> HardwareProfile:
    """Validate schema-version-1 data (as parsed from YAML) into a `HardwareProfile`."""
    src = str(source) if source is not None else "<profile>"
    ck = _Checker(src)
    if not isinstance(data, dict):
        raise ProfileError(f"{src}: expected a mapping at the top level, got {_tname(data)}")
    for k in data:
        if k not in _TOP_KEYS:
            raise ck.fail(str(k), f"unknown top-level key {k!r}; allowed: {', '.join(_TOP_KEYS)}")
    for k, required in _TOP_KEYS.items():
        if required and k not in data:
            raise ck.fail(k, "missing required field")

    version = data["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise ck.fail("schema_version", f"unsupported schema version {version!r}; allowed: {SCHEMA_VERSION}")

    name = ck.string(data["name"], "name")
    description = ck.string(data.get("description", ""), "description", optional=True) or ""
    target = ck.target(data["target"], "target")
    host = data.get("host")
    host = None if host is None else ck.target(host, "host")

    cands_raw = data["candidates"]
    if not isinstance(cands_raw, dict) or not cands_raw:
        raise ck.fail("candidates", f"expected a non-empty mapping of op type ({', '.join(OP_TYPES)}) "
                                    f"to candidate lists, got {_tname(cands_raw)}")
    candidates: dict[str, tuple[str, ...]] = {}
    for op, names in cands_raw.items():
        if op not in OP_TYPES:
            raise ck.fail(f"candidates.{op}", f"unknown op type {op!r}; allowed: {', '.join(OP_TYPES)}")
        fld = f"candidates.{op}"
        if not isinstance(names, list) or not names:
            raise ck.fail(fld, f"expected a non-empty list of candidate names "
                               f"(allowed: {', '.join(numerics.CANDIDATES)}), got {_tname(names)}")
        checked = tuple(ck.candidate_name(n, fld) for n in names)
        dup = sorted({n for n in checked if checked.count(n) > 1})
        if dup:
            raise ck.fail(fld, f"duplicate candidates {', '.join(dup)}")
        if op == "matmul":
            bad = [n for n in checked if numerics.CANDIDATES[n].weight_bits not in (None, 8)]
            if bad:
                allowed = [n for n, c in numerics.CANDIDATES.items() if c.weight_bits in (None, 8)]
                raise ck.fail(fld, f"{', '.join(bad)} not allowed for matmul (activation x activation, no "
                                   f"packed weights); allowed: {', '.join(allowed)}")
        candidates[op] = checked

    cons_raw = data.get("constraints")
    if cons_raw is None:
        constraints = Constraints()
    else:
        ck.mapping(cons_raw, "constraints", {"unified_input_ops": False, "int4_channel_multiple": False})
        uio = cons_raw.get("unified_input_ops", [])
        if uio is None:
            uio = []
        if not isinstance(uio, list):
            raise ck.fail("constraints.unified_input_ops",
                          f"expected a list of op names (allowed: {', '.join(UNIFIED_INPUT_OP_TYPES)}), got {_tname(uio)}")
        for op in uio:
            if op not in UNIFIED_INPUT_OP_TYPES:
                raise ck.fail("constraints.unified_input_ops",
                              f"unknown op {op!r}; allowed: {', '.join(UNIFIED_INPUT_OP_TYPES)}")
        mult = ck.integer(cons_raw.get("int4_channel_multiple", 1), "constraints.int4_channel_multiple", 1)
        constraints = Constraints(tuple(uio), mult)

    meas_raw = data.get("measure")
    if meas_raw is None:
        measure = MeasureConfig()
    else:
        keys = {"number": False, "repeat": False, "min_repeat_ms": False, "tuning_trials": False}
        ck.mapping(meas_raw, "measure", keys)
        d = MeasureConfig()
        measure = MeasureConfig(
            number=ck.integer(meas_raw.get("number", d.number), "measure.number", 1),
            repeat=ck.integer(meas_raw.get("repeat", d.repeat), "measure.repeat", 1),
            min_repeat_ms=ck.integer(meas_raw.get("min_repeat_ms", d.min_repeat_ms), "measure.min_repeat_ms", 0),
            tuning_trials=ck.integer(meas_raw.get("tuning_trials", d.tuning_trials), "measure.tuning_trials", 0),
        )

    rpc_key = ck.string(data.get("rpc_key"), "rpc_key", optional=True)

    roof_raw = data.get("roofline")
    if roof_raw is None:
        roofline = None
    else:
        ck.mapping(roof_raw, "roofline", {"peak_gops": True, "memory_gbps": True})
        peaks_raw = roof_raw["peak_gops"]
        if not isinstance(peaks_raw, dict):
            raise ck.fail("roofline.peak_gops",
                          f"expected a mapping of candidate name ({', '.join(numerics.CANDIDATES)}) to GOP/s, "
                          f"got {_tname(peaks_raw)}")
        peaks = {}
        for cname, val in peaks_raw.items():
            key = ck.candidate_name(cname, "roofline.peak_gops")
            peaks[key] = ck.positive_number(val, f"roofline.peak_gops.{key}")
        roofline = Roofline(peaks, ck.positive_number(roof_raw["memory_gbps"], "roofline.memory_gbps"))

    return HardwareProfile(
        name=name,
        description=description,
        target=target,
        host=host,
        candidates=candidates,
        constraints=constraints,
        measure=measure,
        rpc_key=rpc_key,
        roofline=roofline,
        source=Path(source).resolve() if source is not None else None,
    )


# ----------------------------------------------------------------------------- loading


def profile_dirs() -> list[Path]:
    """Directories searched for profiles by name: $TVM_MPQ_PROFILES (os.pathsep-separated) first,
    then the repository's hw_profiles/."""
    dirs = [Path(p).expanduser() for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    dirs.append(DEFAULT_PROFILES_DIR)
    return dirs


def available_profiles() -> list[str]:
    names: set[str] = set()
    for d in profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
            names.update(p.stem for p in d.glob("*.yml"))
    return sorted(names)


HOST_PROFILE = "host"  # the name that stands for `host_profile_name()`
# shipped CPU profiles, fastest first, with the kernel library whose CPU flags the machine must have
_HOST_PROFILES = (("x86_avx512_vnni", "x86_avx512_vnni"), ("x86_avx2", "x86_avx2"))


def host_profile_name(cpu_flags: Optional[set[str]] = None) -> str:
    """The shipped CPU profile this machine runs fastest (`x86_avx512_vnni` where the CPU has AVX-512 with
    VNNI, `x86_avx2` where it has AVX2 and FMA), for `--hw host`. `cpu_flags`: /proc/cpuinfo's by default."""
    from .kernels import LIBRARY_CPU_FLAGS, host_cpu_flags

    flags = host_cpu_flags() if cpu_flags is None else set(cpu_flags)
    for name, library in _HOST_PROFILES:
        if set(LIBRARY_CPU_FLAGS[library]) <= flags:
            return name
    raise ProfileError(
        "--hw host: no shipped profile fits this CPU (it needs at least AVX2 and FMA; /proc/cpuinfo lists "
        f"{len(flags)} flags): name a profile (`tvm-mpq profiles`) or write one for this device "
        "(docs/hardware_profiles.md)")


def resolve_profile_path(name_or_path: str | os.PathLike) -> Path:
    """A path to an existing file, or a bare profile name looked up in `profile_dirs()` ("host": the
    shipped profile of this machine's CPU, `host_profile_name`)."""
    s = str(name_or_path)
    if s == HOST_PROFILE and not Path(s).is_file():
        s = host_profile_name()
    p = Path(s).expanduser()
    looks_like_path = os.sep in s or (os.altsep and os.altsep in s) or p.suffix in (".yaml", ".yml")
    if p.is_file():
        return p
    if looks_like_path:
        raise ProfileError(f"{s}: hardware profile file not found")
    for d in profile_dirs():
        for ext in (".yaml", ".yml"):
            cand = d / f"{s}{ext}"
            if cand.is_file():
                return cand
    avail = available_profiles()
    raise ProfileError(
        f"unknown hardware profile {s!r}; available: {', '.join(avail) if avail else '(none)'} "
        f"(searched {', '.join(str(d) for d in profile_dirs())}; set ${PROFILES_ENV} to add a directory)"
    )


def load_profile(name_or_path: str | os.PathLike) -> HardwareProfile:
    """Load and validate a hardware profile by bare name (e.g. "x86_avx2") or by file path."""
    path = resolve_profile_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"{path}: cannot read hardware profile: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: invalid YAML: {e}") from e
    return profile_from_dict(data, path)

"""XGBoost latency model of one hardware profile: (workload, candidate) → milliseconds, with uncertainty.

Model. The target is ln(median ms). Each ensemble member is
- a small ridge regression on a few log-scale features (MACs, bytes moved, bit widths, op kind), which
  carries the trend beyond the training range (a tree ensemble alone predicts a constant there), plus
- gradient-boosted trees (XGBoost) on all features, fitted to what the linear part leaves
  (the linear prediction enters XGBoost as ``base_margin``).
Members are trained on bootstrap resamples of the training *workloads* (all candidates of a drawn
workload come together), so their spread says how much the data pins down a prediction for an unseen
workload. `predict` returns the geometric mean of the members and the standard deviation of their
predictions, both in ms. Far from the training data the bootstrap linear slopes diverge and the spread
grows.

Persistence: one JSON document (config, feature names, per member the linear coefficients and the
booster in XGBoost's own JSON model format). Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

import numpy as np

from ..numerics import Candidate
from .features import FEATURE_NAMES, as_candidate, featurize_many

if TYPE_CHECKING:
    from ..graph import Workload
    from ..store import Measurement

__all__ = ["LatencyModelConfig", "LatencyModel", "LatencyModelError", "evaluate", "spearman",
           "samples_from_measurements", "MIN_SAMPLES"]

FORMAT = "tvm_mpq.latency_model"
FORMAT_VERSION = 1
MIN_SAMPLES = 8
# Features of the linear part (log-log trend); intercept added.
BASE_FEATURES = ("log2_macs", "log2_bytes_moved", "weight_bits", "act_bits", "float_bits",
                 "op_conv2d", "op_linear", "op_matmul")
_BASE_IDX = [FEATURE_NAMES.index(n) for n in BASE_FEATURES]


class LatencyModelError(ValueError):
    """The latency model cannot be trained, used, saved or loaded as asked."""


@dataclass(frozen=True)
class LatencyModelConfig:
    n_members: int = 8
    max_depth: int = 6
    n_estimators: int = 300
    learning_rate: float = 0.08
    seed: int = 0
    min_child_weight: float = 1.0
    subsample: float = 1.0
    linear_base: bool = True  # ridge trend under the trees (extrapolates; False: trees only)
    ridge: float = 1e-3
    n_threads: int = 1  # XGBoost threads per member; small data trains fastest on 1 (0: XGBoost default, all cores)

    def __post_init__(self):
        def bad(name, need):
            raise LatencyModelError(f"LatencyModelConfig.{name} must be {need}, got {getattr(self, name)!r}")

        for name in ("n_members", "max_depth", "n_estimators"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "an integer >= 1")
        for name in ("seed", "n_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, "an integer >= 0")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate <= 1):
            bad("learning_rate", "in (0, 1]")
        if not (isinstance(self.subsample, (int, float)) and 0 < self.subsample <= 1):
            bad("subsample", "in (0, 1]")
        for name in ("min_child_weight", "ridge"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(name, "a finite number >= 0")
        if not isinstance(self.linear_base, bool):
            bad("linear_base", "true or false")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "LatencyModelConfig":
        if not isinstance(data, dict):
            raise LatencyModelError(f"latency model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LatencyModelError(f"unknown latency model config keys {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**data)


Pair = tuple["Workload", Union[Candidate, str]]


def _xgb():
    try:
        import xgboost
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise LatencyModelError("the latency model needs xgboost (pip install xgboost-cpu)") from e
    return xgboost


def _base_matrix(X: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ones((X.shape[0], 1)), X[:, _BASE_IDX]], axis=1)


def _fit_ridge(B: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    # standardised ridge (intercept unpenalised), solved by lstsq on the augmented system
    mu = B[:, 1:].mean(axis=0)
    sd = B[:, 1:].std(axis=0)
    sd[sd == 0] = 1.0
    Z = (B[:, 1:] - mu) / sd
    yc = y - y.mean()
    k = Z.shape[1]
    A = np.concatenate([Z, math.sqrt(lam * len(y)) * np.eye(k)], axis=0)
    rhs = np.concatenate([yc, np.zeros(k)])
    w, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    coef = w / sd
    intercept = y.mean() - float(mu @ coef)
    return np.concatenate([[intercept], coef])


class LatencyModel:
    """Per-profile latency model; see the module docstring."""

    def __init__(self, config: Optional[LatencyModelConfig] = None, profile: Optional[str] = None):
        self.config = config if config is not None else LatencyModelConfig()
        if not isinstance(self.config, LatencyModelConfig):
            raise LatencyModelError(f"config must be a LatencyModelConfig, got {type(self.config).__name__}")
        self.profile = profile
        self._members: list[tuple[np.ndarray, Any]] = []  # (linear coefficients, xgboost.Booster)
        self.train_info: dict = {}

    @property
    def is_trained(self) -> bool:
        return bool(self._members)

    # -- training

    def fit(self, samples: Sequence[tuple["Workload", Union[Candidate, str], float]]) -> "LatencyModel":
        """Train on ``(workload, candidate, median ms)`` samples; replaces any previous training."""
        samples = list(samples)
        if len(samples) < MIN_SAMPLES:
            raise LatencyModelError(
                f"the latency model needs at least {MIN_SAMPLES} measured samples to train, got {len(samples)}; "
                "measure more layers (or use the roofline fallback)")
        ms = np.array([s[2] for s in samples], dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(ms) & (ms > 0)))
        if bad.size:
            raise LatencyModelError(f"latencies must be finite and > 0 ms; sample {int(bad[0])} has {ms[bad[0]]!r}")
        X = featurize_many((s[0], s[1]) for s in samples)
        y = np.log(ms)
        # bootstrap by workload: all candidates of a drawn workload come together
        groups: dict = {}
        for i, s in enumerate(samples):
            groups.setdefault(s[0], []).append(i)
        members_idx = list(groups.values())
        if len(members_idx) < 2:
            members_idx = [[i] for i in range(len(samples))]

        xgb = _xgb()
        cfg = self.config
        members = []
        for m in range(cfg.n_members):
            rng = np.random.default_rng([cfg.seed, m])
            draw = rng.integers(0, len(members_idx), size=len(members_idx))
            idx = np.concatenate([members_idx[g] for g in draw]).astype(np.int64)
            Xm, ym = X[idx], y[idx]
            if cfg.linear_base:
                coef = _fit_ridge(_base_matrix(Xm), ym, cfg.ridge)
            else:
                coef = np.concatenate([[float(np.mean(ym))], np.zeros(len(BASE_FEATURES))])
            margin = _base_matrix(Xm) @ coef
            dtrain = xgb.DMatrix(Xm, label=ym, base_margin=margin, feature_names=list(FEATURE_NAMES))
            params = {
                "objective": "reg:squarederror", "max_depth": cfg.max_depth, "eta": cfg.learning_rate,
                "min_child_weight": cfg.min_child_weight, "subsample": cfg.subsample,
                "seed": cfg.seed * 1000 + m, "verbosity": 0, "tree_method": "hist",
            }
            if cfg.n_threads:
                params["nthread"] = cfg.n_threads
            booster = xgb.train(params, dtrain, num_boost_round=cfg.n_estimators)
            members.append((coef, booster))
        self._members = members
        self.train_info = {
            "n_samples": len(samples),
            "n_workloads": len(groups),
            "candidates": sorted({as_candidate(s[1]).name for s in samples}),
            "feature_min": X.min(axis=0).tolist(),
            "feature_max": X.max(axis=0).tolist(),
            "ms_min": float(ms.min()),
            "ms_max": float(ms.max()),
        }
        return self

    # -- prediction

    def _member_log_predictions(self, X: np.ndarray) -> np.ndarray:
        xgb = _xgb()
        B = _base_matrix(X)
        out = np.empty((len(self._members), X.shape[0]))
        for k, (coef, booster) in enumerate(self._members):
            margin = B @ coef
            d = xgb.DMatrix(X, base_margin=margin, feature_names=list(FEATURE_NAMES))
            out[k] = booster.predict(d, output_margin=True)
        return out

    def predict(self, pairs: Iterable[Pair]) -> tuple[np.ndarray, np.ndarray]:
        """(mean ms, std ms) per ``(workload, candidate)``: the members' geometric mean and spread."""
        if not self.is_trained:
            raise LatencyModelError("the latency model is not trained: call fit(samples) or LatencyModel.load(path)")
        X = featurize_many(pairs)
        if X.shape[0] == 0:
            return np.zeros(0), np.zeros(0)
        P = self._member_log_predictions(X)
        mean_ms = np.exp(P.mean(axis=0))
        std_ms = np.exp(P).std(axis=0)
        return mean_ms, std_ms

    def predict_one(self, workload: "Workload", candidate: Union[Candidate, str]) -> tuple[float, float]:
        mean, std = self.predict([(workload, candidate)])
        return float(mean[0]), float(std[0])

    # -- persistence

    def to_json_dict(self) -> dict:
        if not self.is_trained:
            raise LatencyModelError("cannot save an untrained latency model: call fit(samples) first")
        members = []
        for coef, booster in self._members:
            members.append({
                "linear": [float(c) for c in coef],
                "booster": json.loads(bytes(booster.save_raw(raw_format="json"))),
            })
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "profile": self.profile,
            "config": self.config.to_dict(),
            "feature_names": list(FEATURE_NAMES),
            "base_features": list(BASE_FEATURES),
            "train_info": self.train_info,
            "xgboost_version": _xgb().__version__,
            "members": members,
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the model as one JSON document (atomically: temporary file, then rename)."""
        doc = self.to_json_dict()
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, allow_nan=False, separators=(",", ":"))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def from_json_dict(cls, doc: Any, source: str = "<latency model>") -> "LatencyModel":
        def fail(msg: str) -> LatencyModelError:
            return LatencyModelError(f"{source}: {msg}")

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise fail(f"not a tvm_mpq latency model (expected a JSON object with \"format\": \"{FORMAT}\")")
        if doc.get("version") != FORMAT_VERSION:
            raise fail(f"latency model format version {doc.get('version')!r} not supported (supports {FORMAT_VERSION})")
        if doc.get("feature_names") != list(FEATURE_NAMES) or doc.get("base_features") != list(BASE_FEATURES):
            raise fail("trained with a different feature set than this tvm_mpq computes; retrain the model")
        try:
            config = LatencyModelConfig.from_dict(doc.get("config"))
        except (LatencyModelError, TypeError) as e:
            raise fail(f"bad config: {e}") from None
        members_raw = doc.get("members")
        if not isinstance(members_raw, list) or not members_raw:
            raise fail("holds no trained ensemble members (an untrained model); train it with fit() and save again")
        xgb = _xgb()
        members = []
        for k, mem in enumerate(members_raw):
            if not isinstance(mem, dict) or not isinstance(mem.get("booster"), dict):
                raise fail(f"member {k}: expected {{\"linear\": [...], \"booster\": {{...}}}}")
            coef = mem.get("linear")
            if (not isinstance(coef, list) or len(coef) != len(BASE_FEATURES) + 1
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                               for c in coef)):
                raise fail(f"member {k}: 'linear' must be {len(BASE_FEATURES) + 1} finite numbers")
            booster = xgb.Booster()
            try:
                booster.load_model(bytearray(json.dumps(mem["booster"]).encode("utf-8")))
            except xgb.core.XGBoostError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise fail(f"member {k}: invalid XGBoost model: {first}") from None
            if booster.num_features() != len(FEATURE_NAMES):
                raise fail(f"member {k}: booster has {booster.num_features()} features, expected {len(FEATURE_NAMES)}")
            members.append((np.asarray(coef, dtype=np.float64), booster))
        model = cls(config, profile=doc.get("profile"))
        model._members = members
        info = doc.get("train_info")
        model.train_info = info if isinstance(info, dict) else {}
        return model

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "LatencyModel":
        """Load a model written by `save`; a missing, corrupt or untrained file raises LatencyModelError."""
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LatencyModelError(f"{path}: latency model file not found; train one (LatencyModel.fit + save) "
                                    "or use the roofline fallback") from None
        except UnicodeDecodeError:
            raise LatencyModelError(f"{path}: not a tvm_mpq latency model (not UTF-8 JSON text)") from None
        except OSError as e:
            raise LatencyModelError(f"{path}: cannot read latency model: {e}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise LatencyModelError(f"{path}: not a tvm_mpq latency model (invalid JSON at line {e.lineno}: "
                                    f"{e.msg})") from None
        return cls.from_json_dict(doc, str(path))


# ----------------------------------------------------------------------------- evaluation


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties get their average rank."""
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg = (ends - counts + ends - 1) / 2.0
    return avg[inv.reshape(-1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged); nan when either side is constant or n < 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ {a.shape} vs {b.shape}")
    if a.size < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else float("nan")


def evaluate(model: LatencyModel, samples: Sequence[tuple["Workload", Union[Candidate, str], float]]) -> dict:
    """Accuracy on held-out samples: MAPE (fraction, 0.1 = 10 %), Spearman rank correlation, count."""
    samples = list(samples)
    if not samples:
        raise LatencyModelError("evaluate needs at least one sample")
    truth = np.array([s[2] for s in samples], dtype=np.float64)
    pred, std = model.predict([(s[0], s[1]) for s in samples])
    ape = np.abs(pred - truth) / truth
    return {
        "mape": float(ape.mean()),
        "median_ape": float(np.median(ape)),
        "spearman": spearman(pred, truth),
        "mean_rel_std": float(np.mean(std / pred)),
        "n": len(samples),
    }


def samples_from_measurements(measurements: Iterable["Measurement"]) -> list[tuple["Workload", str, float]]:
    """Training samples from stored layer measurements (kind "layer"; the workload key parsed back)."""
    from ..graph import Workload  # imports torch: only when used

    names = {f.name for f in fields(Workload)}
    out = []
    for m in measurements:
        if m.kind != "layer":
            continue
        try:
            data = json.loads(m.workload)
            if not isinstance(data, dict) or set(data) - names:
                raise ValueError("unexpected fields")
            data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
            wl = Workload(**data)
        except (ValueError, TypeError) as e:
            raise LatencyModelError(f"stored workload key is not a Workload ({e}): {m.workload[:120]}") from None
        out.append((wl, m.candidate, m.median_ms))
    return out

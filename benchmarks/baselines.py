"""What a user would otherwise pick, measured on one model: PyTorch eager fp32, ONNX Runtime fp32,
ONNX Runtime static int8 (QDQ, per-channel s8 weights, u8 activations, MinMax calibration on the
project's calibration samples), the same with `reduce_range` (7-bit weights: ONNX Runtime's advice for
AVX2 CPUs without VNNI, whose u8 x s8 kernels saturate) and, for transformers, ONNX Runtime dynamic int8.

Every executor runs with `THREADS` intra-op threads and is timed at each batch size (`warmup` untimed
calls, then `repeat` timed calls: median, IQR, min, max); its outputs on the held-out samples (run one
sample at a time) come back beside the timings so that the caller computes quality against PyTorch's.

    python benchmarks/baselines.py [--models efficientnet_lite0,minilm_l6,small_cnn] [--fast]

prints the latency table (`benchmarks/end_to_end.py` runs the same functions beside TVM and writes JSON).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import ort  # noqa: E402
from benchmarks.timing import THREADS, set_torch_threads, time_callable  # noqa: E402

TORCH_FP32, ORT_FP32, ORT_STATIC_INT8, ORT_STATIC_INT8_RR, ORT_DYNAMIC_INT8 = (
    "PyTorch fp32", "ORT fp32", "ORT static int8", "ORT static int8 reduce_range", "ORT dynamic int8")
# ONNX Runtime's dynamic int8 is the usual choice for transformers (and poor for convolutions).
DYNAMIC_INT8_MODELS = frozenset({"minilm_l6", "tiny_transformer"})
# Samples per model (calibration, held-out), as benchmarks/search_models.py splits them: the first
# `calib` samples of the model's calibration set calibrate, the next `eval` measure quality.
SAMPLES = {"minilm_l6": (64, 16)}
DEFAULT_SAMPLES = (256, 64)
FAST_SAMPLES = (16, 8)

Inputs = tuple  # one batched input tuple of NumPy arrays, in forward() order


def split_samples(spec, calib_samples: int, eval_samples: int) -> tuple[list[tuple], list[tuple]]:
    """(calibration, held-out) batch-1 input tuples from the model's calibration set."""
    data = spec.calibration(calib_samples + eval_samples)
    if len(data) < calib_samples + eval_samples:
        raise ValueError(f"{spec.name}: {len(data)} samples, {calib_samples + eval_samples} needed")
    return list(data[:calib_samples]), list(data[calib_samples:calib_samples + eval_samples])


def batch_of(samples: Sequence[Sequence], batch: int) -> Inputs:
    """`batch` samples (cycled when fewer) stacked on axis 0 into one input tuple of NumPy arrays."""
    if not samples:
        raise ValueError("no samples to batch")
    picked = [samples[i % len(samples)] for i in range(batch)]
    return tuple(np.ascontiguousarray(np.concatenate([np.asarray(s[k]) for s in picked]))
                 for k in range(len(picked[0])))


class TorchExecutor:
    """PyTorch eager fp32 under `no_grad` (batch size free)."""

    def __init__(self, module):
        self.module = module.eval()

    def __call__(self, inputs: Inputs) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(*(torch.from_numpy(a) for a in inputs)).numpy()


class OrtExecutor:
    """One ONNX Runtime session (batch axis dynamic), fed NumPy arrays as a user would.

    The session is created on the first call and dropped by `close()`: a freshly created session's
    thread pool slows other executors' threads down until its first run, so none is left idle while
    another executor is timed.
    """

    def __init__(self, path, threads: int = THREADS):
        self.path = Path(path)
        self.threads = threads
        self._session, self._names = None, []

    def __call__(self, inputs: Inputs) -> np.ndarray:
        if self._session is None:
            self._session = ort.session(self.path, self.threads)
            self._names = [i.name for i in self._session.get_inputs()]
        return self._session.run(None, dict(zip(self._names, inputs)))[0]

    def close(self) -> None:
        self._session = None


def baseline_executors(spec, calibration: Sequence[Sequence], workdir, dynamic_int8: Optional[bool] = None,
                       threads: int = THREADS) -> dict[str, Callable[[Inputs], np.ndarray]]:
    """{label: executor} for `spec`: the ONNX files (fp32 export, static and dynamic int8) go to `workdir`."""
    workdir = Path(workdir)
    set_torch_threads(threads)
    fp32 = ort.export_onnx(spec.module, spec.example_inputs, workdir / f"{_slug(spec.name)}_fp32.onnx")
    static = ort.quantize_static_qdq(fp32, workdir / f"{_slug(spec.name)}_static_int8.onnx", calibration)
    static_rr = ort.quantize_static_qdq(fp32, workdir / f"{_slug(spec.name)}_static_int8_rr.onnx", calibration,
                                        reduce_range=True)
    executors = {TORCH_FP32: TorchExecutor(spec.module), ORT_FP32: OrtExecutor(fp32, threads),
                 ORT_STATIC_INT8: OrtExecutor(static, threads), ORT_STATIC_INT8_RR: OrtExecutor(static_rr, threads)}
    if dynamic_int8 if dynamic_int8 is not None else spec.name in DYNAMIC_INT8_MODELS:
        dynamic = ort.quantize_dynamic_int8(fp32, workdir / f"{_slug(spec.name)}_dynamic_int8.onnx")
        executors[ORT_DYNAMIC_INT8] = OrtExecutor(dynamic, threads)
    return executors


def run_outputs(executor: Callable[[Inputs], np.ndarray], samples: Sequence[Sequence], batch: int = 1) -> np.ndarray:
    """The executor's outputs on `samples`, run `batch` at a time (a shorter last batch where needed)."""
    outs = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        outs.append(executor(batch_of(chunk, len(chunk))))
    return np.concatenate(outs)


@dataclass
class BaselineResult:
    """One executor on one model: latency per batch size, outputs on the held-out (and labeled) samples."""

    label: str
    latency: dict[int, object]  # batch -> tvm_mpq.build.LatencyStats
    outputs: np.ndarray  # held-out samples, run one at a time
    labeled_outputs: Optional[np.ndarray] = None
    files: dict[str, str] = field(default_factory=dict)


def run_baselines(spec, calibration: Sequence[Sequence], held_out: Sequence[Sequence], *, batches=(1, 8),
                  repeat: int = 20, warmup: int = 3, workdir=None, labeled_inputs: Optional[Sequence] = None,
                  labeled_batch: int = 8, threads: int = THREADS, keep_open: Optional[dict] = None,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, BaselineResult]:
    """Build every baseline executor of `spec`, time it at each batch size and run it on the held-out samples.

    Batches for timing are held-out samples stacked (cycled when there are fewer than the batch size).
    With `keep_open` (a dict, and a `workdir` that outlives the call), the executors are put there instead of
    being closed, for the caller to time again and close.
    """
    with tempfile.TemporaryDirectory(prefix="tvm_mpq_onnx_") as tmp:
        workdir = Path(workdir) if workdir is not None else Path(tmp)
        executors = baseline_executors(spec, calibration, workdir, threads=threads)
        results = {}
        for label, executor in executors.items():
            latency = {}
            for batch in batches:
                inputs = batch_of(held_out, batch)
                latency[batch] = time_callable(lambda: executor(inputs), repeat=repeat, warmup=warmup)
                log(f"{label:<18} batch {batch}: {latency[batch].median_ms:9.3f} ms "
                    f"(IQR {latency[batch].iqr_ms:.3f})")
            labeled = run_outputs(executor, labeled_inputs, labeled_batch) if labeled_inputs else None
            outputs = run_outputs(executor, held_out)
            files = {}
            if isinstance(executor, OrtExecutor):
                files["onnx"] = str(executor.path)
                if keep_open is None:
                    executor.close()
            if keep_open is not None:
                keep_open[label] = executor
            results[label] = BaselineResult(label, latency, outputs, labeled, files)
        return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def main(argv=None) -> int:
    from tvm_mpq.models import load_model

    from benchmarks.quality import attention_mask, output_quality

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,minilm_l6,small_cnn")
    parser.add_argument("--fast", action="store_true", help="tiny models, few samples and runs (smoke test)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    models = ["tiny_cnn", "tiny_transformer"] if args.fast else args.models.split(",")
    repeat = 5 if args.fast else args.repeat
    for name in models:
        spec = load_model(name)
        n_calib, n_eval = FAST_SAMPLES if args.fast else SAMPLES.get(name, DEFAULT_SAMPLES)
        calib, held_out = split_samples(spec, n_calib, n_eval)
        results = run_baselines(spec, calib, held_out, repeat=repeat,
                                log=lambda m: print(f"[{name}] {m}", flush=True))
        reference = results[TORCH_FP32].outputs
        for label, r in results.items():
            q = output_quality(reference, r.outputs, attention_mask(held_out))
            print(f"[{name}] {label:<18} " + "  ".join(f"{k} {v:.4g}" for k, v in q.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

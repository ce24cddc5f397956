"""The CUDA target path up to the GPU: the GPU schedule and nvcc cross-compilation (slow: compiles), and
the device scripts (scripts/device/: runtime bundle, prepare, measure) exercised on the CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ToyNet

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"device_{name}", ROOT / "scripts" / "device" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def measure():
    return _script("measure")


@pytest.fixture(scope="module")
def prepare():
    return _script("prepare")


# ---------------------------------------------------------------------------- fast: the measure script's parts


def test_make_array_respects_spec_and_files(measure, tmp_path):
    rng = np.random.default_rng(0)
    u8 = measure.make_array({"shape": [4, 64], "dtype": "uint8"}, rng)
    i16 = measure.make_array({"shape": [1000], "dtype": "int16"}, rng)
    f16 = measure.make_array({"shape": [2, 3], "dtype": "float16"}, rng)
    assert u8.dtype == np.uint8 and u8.shape == (4, 64) and u8.max() > 128
    assert i16.dtype == np.int16 and -127 <= i16.min() < 0 < i16.max() <= 127
    assert f16.dtype == np.float16 and np.isfinite(f16).all()
    ids = np.arange(12, dtype=np.int64).reshape(1, 12)
    np.save(tmp_path / "ids.npy", ids)
    got = measure.make_array({"shape": [1, 12], "dtype": "int64", "file": "ids.npy"}, rng, tmp_path)
    np.testing.assert_array_equal(got, ids)  # saved inputs (token ids) are used as they are


def test_kernel_lookup_maps_source_hash_to_fatbin(measure, tmp_path):
    from tvm_mpq.kernels.cuda_schedule import kernel_key

    source = 'extern "C" __global__ void k(float* a) { a[0] = 1.0f; }'
    assert measure.kernel_key(source) == kernel_key(source)  # the standalone copy agrees with the package
    (tmp_path / f"{kernel_key(source)}.fatbin").write_bytes(b"\x50\xed\x55\xba-binary")
    lookup = measure.kernel_lookup(tmp_path)
    assert bytes(lookup(source)) == b"\x50\xed\x55\xba-binary"
    with pytest.raises(RuntimeError, match="no cross-compiled kernel"):
        lookup(source + " ")


def test_time_callable_scales_number_to_min_repeat(measure):
    calls = []

    def fn():
        calls.append(1)
        sum(range(2000))

    per, number = measure.time_callable(fn, "cpu", repeat=3, min_repeat_ms=5)
    assert len(per) == 3 and all(v > 0 for v in per)
    assert number > 1 and per[0] * number >= 5 * 0.5  # a repeat lasted about min_repeat_ms


def test_torch_baselines_cpu_conv_linear_matmul(measure):
    conv = {"op": "conv2d", "input_shape": [1, 4, 9, 9], "weight_shape": [8, 4, 3, 3], "strides": [2, 2],
            "padding": [0, 0, 1, 1], "dilation": [1, 1], "groups": 1}
    lin = {"op": "linear", "input_shape": [1, 20, 16], "weight_shape": [24, 16]}
    mm = {"op": "matmul", "input_shape": [1, 2, 8, 4], "weight_shape": [1, 2, 4, 8]}
    for wl in (conv, lin, mm):
        out = measure.torch_baselines(wl, "cpu", repeat=2, min_repeat_ms=1)
        assert out["fp32"]["median_ms"] > 0 and len(out["fp32"]["per_repeat_ms"]) == 2
        assert "skipped" in out["fp16"] and "skipped" in out["int8"]  # CUDA-only baselines say why


def test_output_check_tells_rounding_from_wrong(measure):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(5000)
    assert measure.compare(ref.copy(), ref) == {"ok": True, "bit_exact": True, "sqnr_db": "inf",
                                                "max_abs_diff": 0.0, "points": 5000, "nonfinite_reference": 0}
    rounded = measure.compare(ref + rng.standard_normal(5000) * 1e-3, ref)  # 60 dB: float rounding
    assert rounded["ok"] and not rounded["bit_exact"] and 55 < rounded["sqnr_db"] < 65
    wrong = measure.compare(rng.standard_normal(5000), ref)  # unrelated values: about -3 dB
    assert not wrong["ok"] and wrong["sqnr_db"] < 0
    inf_moved = ref.copy()
    inf_moved[3] = np.inf
    assert not measure.compare(inf_moved, ref)["ok"]  # a non-finite value where the reference has none
    assert not measure.compare(ref[:10], ref)["ok"]
    # the sampled positions depend on the key only, so both hosts compare the same elements
    outs = [np.arange(10000, dtype=np.float32).reshape(100, 100), np.ones(3)]
    a, b = measure.output_sample(outs, "task1"), measure.output_sample(outs, "task1")
    assert a.size == measure.CHECK_POINTS and np.array_equal(a, b)
    assert not np.array_equal(a, measure.output_sample(outs, "task2"))
    assert measure.output_sample([np.ones((2, 3))], "t").size == 6  # small outputs: every element
    e = {"id": "abc", "inputs": [{"shape": [3], "dtype": "float32"}], "weights": [{"shape": [2], "dtype": "int8"}]}
    first, again = measure.entry_arrays(e, None), measure.entry_arrays(dict(e), None)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))  # seeded by the item, not by run order
    assert not np.array_equal(first[0], measure.entry_arrays(dict(e, id="abd"), None)[0])


def test_exported_torch_model_runs_without_its_weights(prepare, measure, tmp_path):
    """The whole-model PyTorch baseline: the float model exported as ATen code plus placeholder shapes runs
    in the measure script (no model package there). With the model's own parameters it reproduces the
    model's output exactly; with the seeded random ones (what the device run times) it runs too."""
    from tvm_mpq.models import load_model

    spec = load_model("tiny_transformer")
    entry = prepare.export_torch_model(spec, tmp_path)
    assert {p["kind"] for p in entry["placeholders"]} >= {"parameter", "input"}
    assert not (tmp_path / entry["values"]).stat().st_size > 1 << 20  # no weights in it
    ep = torch.export.export(spec.module.eval(), tuple(spec.example_inputs))
    params = {s.arg.name: ep.state_dict[s.target] for s in ep.graph_signature.input_specs
              if s.kind.name == "PARAMETER"}
    call, _ = measure.torch_model_forward(entry, tmp_path, "cpu", params=params)
    with torch.no_grad():
        (got,) = call() if isinstance(call(), (tuple, list)) else (call(),)
        want = spec.module.eval()(*spec.example_inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    call, _ = measure.torch_model_forward(entry, tmp_path, "cpu")
    with torch.no_grad():
        out = call()
    assert torch.isfinite(out[0] if isinstance(out, (tuple, list)) else out).all()
    timings = measure.torch_model_baselines(entry, tmp_path, "cpu", repeat=2, min_repeat_ms=1)
    assert timings["fp32"]["median_ms"] > 0 and "skipped" in timings["fp16_autocast"]


def test_measure_records_import_into_store(measure, tmp_path):
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import kernels_id
    from tvm_mpq.store import MeasurementStore

    kernels = kernels_id(load_profile("cuda_sm90").tvm_target())
    assert kernels.startswith("cuda/")
    manifest = {"profile": "cuda_sm90", "kernels": kernels}
    wl = json.dumps({"op": "linear"})
    rec = measure._record(manifest, "cuda:NVIDIA_H100", "layer", wl, "W8A8", [0.02, 0.021, 0.019], 50,
                          {"op": "linear", "torch": {"fp16": {"median_ms": 0.01, "op": "torch matmul"}}})
    entry = {"model": "m", "plan": "mixed", "inputs": [{"shape": [1, 3], "dtype": "float32"}],
             "layers": {"a": "W8A8", "b": "FP16"}}
    workload, candidate = measure.model_key(entry)
    assert candidate.startswith("mixed:") and measure.model_key(dict(entry, layers={"a": "FP16"}))[1] != candidate
    model_rec = measure._record(manifest, "cuda:NVIDIA_H100", "model", workload, candidate, [1.5, 1.4], 3, {})
    path = tmp_path / "measurements.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (measure.HEADER, rec, model_rec)) + "\n")
    with MeasurementStore(tmp_path / "store.sqlite") as store:
        assert store.import_json(path) == 2
        got = store.get("cuda_sm90", "cuda:NVIDIA_H100", "layer", wl, "W8A8")
        assert got.median_ms == pytest.approx(0.02) and got.min_ms == pytest.approx(0.019)
        assert got.source == "imported" and got.number == 50 and got.meta["torch"]["fp16"]["median_ms"] == 0.01
        assert got.meta["kernels"] == kernels  # so the cuda_sm90 latency tables use it (not ignored as stale)
        assert store.get("cuda_sm90", "cuda:NVIDIA_H100", "model", workload, candidate).repeats == 2


def test_mixed_plan_respects_groups_and_profile(prepare):
    from tvm_mpq.frontend import import_model
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.plan import Plan, resolve

    imported = import_model(ToyNet().eval(), (torch.randn(1, 3, 16, 16),), name="toy")
    graph = imported.graph
    for hw in ("cuda_sm90", "x86_avx2"):
        profile = load_profile(hw)
        layers = prepare.mixed_plan_layers(graph, profile)
        assert set(layers) == set(graph.layers)
        for group in graph.groups:
            assert len({layers[n] for n in group.layers}) == 1
        for name, cand in layers.items():
            assert profile.supports(graph.layers[name].op_type, cand)
        ranges = {n: ((0.0, 1.0),) * graph.layers[n].num_act_inputs for n in layers}
        resolve(Plan(layers, ranges), graph, profile)  # a valid plan for the profile (raises otherwise)
    cuda = prepare.mixed_plan_layers(graph, load_profile("cuda_sm90"))
    assert cuda["dw"] == "FP16" and cuda["stem"] == "FP16"  # depthwise, first layer
    assert cuda["fc"] == "W4A16"  # a batch-1 linear (GEMV)
    assert "W8A8" in cuda.values()


# ---------------------------------------------------------------------------- slow: compiles


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_task_schedules_and_cross_compiles(tmp_path):
    """A W8A8 and a W4A16 linear for sm_90: the integer GEMM gets IntegerMatmul, nvcc writes an sm_90 fatbin,
    the exported library holds the CUDA module (its source, which the fatbin is keyed by), and the runtime
    bundle loading the library asks the measure script's callback for exactly that fatbin."""
    from tvm_mpq.graph import Workload
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import cuda_schedule, kernel_library
    from tvm_mpq.measure.tasks import LAYER, Task, build_task_module

    profile = load_profile("cuda_sm90")
    target = profile.tvm_target()
    wl = Workload("linear", (64, 128), (96, 128), (64, 96), has_bias=True).key()
    libs = []
    for cand in ("W8A8", "W4A16"):
        mod, _ = build_task_module(Task(LAYER, wl, cand, "linear", 64 * 128 * 96), kernels=kernel_library(target))
        log, lifted = {}, []
        ex = cuda_schedule.compile_relax(mod, target, log, lifted)
        assert ("IntegerMatmulDP4A" if cand == "W8A8" else "IntegerMatmul") in log.values(), log  # M = 64: no MMA
        assert lifted and lifted[0][1] == ("int8" if cand == "W8A8" else "uint8")  # the weight became a parameter
        keys = cuda_schedule.cross_compile_kernels(ex, target, tmp_path / "kernels")
        sources = cuda_schedule.cuda_sources(ex)
        assert len(keys) == len(sources) == 1 and "__global__" in sources[0]
        fatbin = (tmp_path / "kernels" / f"{keys[0]}.fatbin").read_bytes()
        assert fatbin[:4] == b"\x50\xed\x55\xba"  # CUDA fatbin magic
        assert b"-arch sm_90" in fatbin  # ptxas built SASS for sm_90 (its options are recorded in the ELF)
        lib = tmp_path / f"{cand}.so"
        ex.export_library(str(lib))
        blob = lib.read_bytes()
        kernel_name = sources[0].split('extern "C" __global__ void')[1].split("(")[0].strip().split()[-1]
        assert kernel_name.encode() in blob  # the CUDA module travels inside the library
        libs.append((lib, keys[0]))
    if shutil.which("gcc") is None:
        return
    # Load the libraries as the GPU host does: runtime-only bundle, TVM's CUDA runtime module, kernels from the
    # folder. No GPU here: a stand-in libcuda.so.1 whose calls all fail lets the CUDA runtime library load;
    # loading a library hands each CUDA source to the compile callback, which must find the fatbin made above.
    (tmp_path / "stub.c").write_text(CUDA_STUB)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libcuda.so.1"), "-Wl,-soname,libcuda.so.1",
                    str(tmp_path / "stub.c")], check=True)
    bundle = tmp_path / "runtime"
    _script("bundle_runtime").build_bundle(bundle)
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_STUB, str(tmp_path / "libcuda.so.1"), str(ROOT / "scripts" / "device"),
         str(bundle), str(tmp_path / "kernels"), *[str(lib) for lib, _ in libs]],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tvm"].startswith(str(bundle))
    assert got["seen"] == [key for _, key in libs]  # each library asked for exactly its cross-compiled kernels


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_w8a8_gemms_run_on_int8_tensor_cores_or_dp4a():
    """W8A8 dense layers and convs whose GEMM dimensions all exceed 64 are scheduled by
    IntegerMatmulTensorCore (int8 WMMA fragments; nvcc's PTX holds the s8 wmma.mma); the others (padded,
    strided, K not a multiple of 4, M and N not multiples of the tile) by IntegerMatmulDP4A (PTX: dp4a.s32.s32).
    Depthwise convs, 16-bit activations (W4A16) and activation x activation matmuls are not int8 x int8
    GEMMs and keep the other rules."""
    from tvm.support import nvcc

    from tvm_mpq.graph import Workload
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.kernels import cuda_schedule, kernel_library
    from tvm_mpq.measure.tasks import LAYER, Task, build_task_module

    target = load_profile("cuda_sm90").tvm_target()
    assert kernel_library(target) == "cuda"
    cases = {
        Workload("linear", (128, 384), (1536, 384), (128, 1536), has_bias=True): ("W8A8", "IntegerMatmulTensorCore"),
        Workload("conv2d", (1, 96, 14, 14), (80, 96, 1, 1), (1, 80, 14, 14), (1, 1), (0, 0, 0, 0), (1, 1), 1,
                 False): ("W8A8", "IntegerMatmulTensorCore"),
        Workload("linear", (50, 30), (20, 30), (50, 20), has_bias=True): ("W8A8", "IntegerMatmulDP4A"),
        Workload("conv2d", (1, 3, 33, 33), (16, 3, 3, 3), (1, 16, 17, 17), (2, 2), (1, 1, 1, 1), (1, 1), 1,
                 True): ("W8A8", "IntegerMatmulDP4A"),
        Workload("conv2d", (1, 24, 14, 14), (40, 24, 1, 1), (1, 40, 14, 14), (1, 1), (0, 0, 0, 0), (1, 1), 1,
                 False): ("W8A8", "IntegerMatmulDP4A"),
        Workload("conv2d", (1, 24, 14, 14), (24, 1, 3, 3), (1, 24, 14, 14), (1, 1), (1, 1, 1, 1), (1, 1), 24,
                 False): ("W8A8", None),
        Workload("linear", (128, 384), (1536, 384), (128, 1536), has_bias=True): ("W4A16", None),
    }
    for wl, (cand, rule) in cases.items():
        mod, _ = build_task_module(Task(LAYER, wl.key(), cand, wl.op, 1), kernels=kernel_library(target))
        log = {}
        ex = cuda_schedule.compile_relax(mod, target, log)
        (source,) = cuda_schedule.cuda_sources(ex)
        kernel = source.split('extern "C" __global__')[-1]
        rules = {r.split(" (")[0] for r in log.values()}
        assert (rule in rules) if rule else not rules & {"IntegerMatmulTensorCore", "IntegerMatmulDP4A"}, (wl, log)
        assert ("__dp4a(" in kernel) == (rule == "IntegerMatmulDP4A")
        assert ("wmma::mma_sync" in kernel) == (rule == "IntegerMatmulTensorCore")
        if rule:
            with target:
                ptx = bytes(nvcc.compile_cuda(source, target_format="ptx", compiler="nvcc")).decode()
            if rule == "IntegerMatmulDP4A":
                assert "dp4a.s32.s32" in ptx
            else:
                assert "wmma.mma.sync" in ptx and ".s8" in ptx


CUDA_STUB = r"""
#define STUB(name) int name(void) { return 100; }  /* CUDA_ERROR_NO_DEVICE */
STUB(cuDeviceGetName) STUB(cuFuncSetAttribute) STUB(cuLaunchKernelEx) STUB(cuModuleGetFunction)
STUB(cuModuleLoadData) STUB(cuModuleUnload) STUB(cuTensorMapEncodeTiled)
int cuGetErrorName(int e, const char** s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int e, const char** s) { *s = "no CUDA driver (stand-in libcuda)"; return 0; }
"""

LOAD_WITH_STUB = r"""
import ctypes, json, sys
stub, scripts, bundle, kernels, *libs = sys.argv[1:]
ctypes.CDLL(stub, mode=ctypes.RTLD_GLOBAL)
sys.path.insert(0, scripts)
import measure
tvm = measure.load_runtime(bundle, "cuda", kernels)
import tvm_ffi
seen, lookup = [], measure.kernel_lookup(kernels)
def spy(code):
    seen.append(measure.kernel_key(code))
    return lookup(code)
tvm_ffi.register_global_func("tvm_callback_cuda_compile", spy, override=True)
for lib in libs:
    tvm.runtime.load_module(lib)
print(json.dumps({"seen": seen, "tvm": tvm.__file__}))
"""


@pytest.mark.slow
def test_prepare_and_measure_on_cpu_with_runtime_bundle(prepare, tmp_path):
    """prepare (LLVM target, tiny_cnn, 3 tasks + the W8A8 model) → measure.py in a fresh process with only the
    runtime bundle's tvm (TVM_USE_RUNTIME_LIB=1) on the CPU → the JSON lines import into the store."""
    from tvm_mpq.store import MeasurementStore

    folder = tmp_path / "prepared"
    manifest = prepare.prepare(folder, ["tiny_cnn"], "x86_avx2", ("w8a8",), limit=3, calib_samples=2,
                               log=lambda s: None)
    assert manifest["failed"] == [] and len(manifest["tasks"]) == 3 and len(manifest["models"]) == 1
    assert json.loads((folder / "manifest.json").read_text())["tasks"][0]["id"] == manifest["tasks"][0]["id"]
    assert all((folder / t["library"]).exists() for t in manifest["tasks"] + manifest["models"])
    # every library has a reference output sample, computed by the generic CPU pipeline
    assert all((folder / e["reference"]["file"]).exists() for e in manifest["tasks"] + manifest["models"])
    # a reference that disagrees stands for a library that computes the wrong thing
    wrong = folder / manifest["tasks"][1]["reference"]["file"]
    np.save(wrong, -np.load(wrong) - 1.0)
    bundle = tmp_path / "runtime"
    _script("bundle_runtime").build_bundle(bundle)
    assert not (bundle / "tvm" / "lib" / "libtvm_compiler.so").exists()
    out = tmp_path / "out"
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "scripts" / "device" / "measure.py"), str(folder), "--bundle",
         str(bundle), "--out", str(out), "--device", "cpu", "--repeat", "2", "--number", "1",
         "--min-repeat-ms", "1"], capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TVM_USE_RUNTIME_LIB": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1: an output disagreed with its reference
    results = json.loads((out / "results.json").read_text())
    assert results["runtime"]["runtime_only"] and results["runtime"]["tvm_file"].startswith(str(bundle))
    assert all("error" not in r for r in results["results"] + results["models"]), results
    assert results["models"][0]["tvm_ms"]["median"] > 0
    layer = [r for r in results["results"] if r["kind"] == "layer"][0]
    assert layer["torch_ms"]["fp32"] > 0
    (torch_item,) = [m for m in results["models"] if m["plan"] == "pytorch"]  # whole-model PyTorch baseline
    assert torch_item["torch_ms"]["fp32"]["median_ms"] > 0
    checks = [r["check"] for r in results["models"] + results["results"] if "check" in r]  # TVM libraries
    assert [c["ok"] for c in checks] == [True, True, False, True], checks
    assert checks[2]["sqnr_db"] < 0 and results["results"][1].get("wrong_output")
    assert all(float(c["sqnr_db"]) > 60 for c in checks if c["ok"]), checks  # x86 kernels vs generic LLVM
    (wrong_record,) = [json.loads(line) for line in (out / "wrong_output.jsonl").read_text().splitlines()]
    assert wrong_record["workload"] == manifest["tasks"][1]["workload"]
    with MeasurementStore(tmp_path / "store.sqlite") as store:
        assert store.import_json(out / "measurements.jsonl") == 3  # the wrong library's timing is not imported
        kinds = sorted(m.kind for m in store.query(profile="x86_avx2"))
        assert kinds.count("model") == 1 and len(kinds) == 3
        assert all(m.meta["check"]["ok"] for m in store.query(profile="x86_avx2"))
        # the imported timings carry the kernels id, so the profile's latency table uses them
        from tvm_mpq.frontend import import_model
        from tvm_mpq.hardware import load_profile
        from tvm_mpq.kernels import kernels_id
        from tvm_mpq.latency import MEASURED, build_table
        from tvm_mpq.models import load_model

        profile, spec = load_profile("x86_avx2"), load_model("tiny_cnn")
        graph = import_model(spec.module, spec.example_inputs, name=spec.name).graph
        table = build_table(graph, profile, store.query(profile="x86_avx2"), kernels=kernels_id(profile.tvm_target()))
        assert not any("other kernels" in n for n in table.notes), table.notes
        assert any(e.source == MEASURED for row in table.layers.values() for e in row.values())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_searched_gpu_plan_is_prepared_for_the_device(prepare, tmp_path, capsys):
    """The step after a GPU measurement: `tvm-mpq search --hw cuda_sm90` (here on the roofline, as no GPU
    timings are stored) writes a plan, and `prepare.py --plan-file searched=plan.yaml` cross-compiles the
    model at it, with its reference output, for a second device run."""
    from tvm_mpq.cli import main
    from tvm_mpq.plan import Plan

    search = tmp_path / "search"
    assert main(["search", "--model", "tiny_cnn", "--hw", "cuda_sm90", "--min-sqnr", "30", "--measure", "0",
                 "--calib-samples", "8", "--eval-samples", "4", "--store", str(tmp_path / "store.sqlite"),
                 "--out", str(search)]) == 0
    searched = Plan.load(search / "plan.yaml")
    assert searched.model == "tiny_cnn" and searched.profile == "cuda_sm90"
    with pytest.raises(SystemExit, match="not in --models"):
        prepare.prepare(tmp_path / "p0", ["tiny_transformer"], "cuda_sm90", (), tasks=False,
                        plan_files={"searched": search / "plan.yaml"}, log=lambda s: None)
    manifest = prepare.prepare(tmp_path / "prepared", ["tiny_cnn"], "cuda_sm90", ("w8a8",), tasks=False,
                               calib_samples=4, plan_files={"searched": search / "plan.yaml"}, log=lambda s: None)
    assert manifest["failed"] == [] and manifest["kernels"].startswith("cuda/")
    by_plan = {e["plan"]: e for e in manifest["models"]}
    assert set(by_plan) == {"w8a8", "searched"}
    assert by_plan["searched"]["layers"] == dict(searched.layers)
    assert by_plan["searched"]["reference"]["points"] > 0 and by_plan["searched"]["kernels"]
    assert "IntegerMatmulDP4A" in {r.split(" (")[0] for r in by_plan["w8a8"]["schedule"].values()}
    assert manifest["torch_models"][0]["model"] == "tiny_cnn"


def test_measure_stops_when_the_first_items_fail(measure, tmp_path, monkeypatch):
    import tvm  # noqa: F401 - the full TVM of this process (run() would import a runtime-only one first)

    # run() sets TVM_USE_RUNTIME_LIB for its process; it must not leak into later tests' subprocesses
    # (a CLI started with it cannot compile)
    monkeypatch.setenv("TVM_USE_RUNTIME_LIB", "")
    task = {"kind": "convert", "workload": "{}", "candidate": "FP32->A8", "op": "quantize", "macs": 0,
            "inputs": [{"shape": [2], "dtype": "float32"}], "weights": []}
    manifest = {"format": "tvm_mpq_device_bundle", "version": 1, "profile": "x86_avx2", "device_type": "cpu",
                "measure": {"number": 1, "repeat": 1, "min_repeat_ms": 0}, "models": [],
                "tasks": [dict(task, id=f"t{i}", describe=f"task {i}", library=f"tasks/missing{i}.so")
                          for i in range(5)]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    try:
        summary = measure.run(tmp_path, tmp_path / "out", log=lambda s: None, torch_baselines_on=False)
    finally:
        os.environ.pop("TVM_USE_RUNTIME_LIB", None)
    assert summary["aborted"] and summary["records"] == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert len(results) == 3 and all("error" in r for r in results)
    assert (tmp_path / "out" / "measurements.jsonl").read_text().strip() == json.dumps(measure.HEADER)


def test_compile_for_cuda_without_a_gpu_exports_without_running(tmp_path):
    """`tvm-mpq compile --hw cuda_sm90` on a machine without a GPU writes the library and plan and says it
    was not run, instead of failing when it tries to run the model here."""
    import tvm

    if tvm.cuda().exist:
        pytest.skip("a CUDA device is present: the model runs here")
    from tvm_mpq.pipeline import quantize_and_compile

    summary = quantize_and_compile("tiny_cnn", "cuda_sm90", "fp16", out_dir=tmp_path, calib_samples=4,
                                   eval_samples=2)
    assert summary["executed"] is False and "not present on this machine" in summary["note"]
    assert summary["candidate_counts"] == {"FP16": 6}
    assert (tmp_path / "model.so").stat().st_size > 0 and (tmp_path / "plan.yaml").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["executed"] is False
    if shutil.which("nvcc"):  # the kernels a runtime-only GPU host cannot compile, compiled here
        assert summary["artifacts"]["kernels"] == str(tmp_path / "kernels")
        built = list((tmp_path / "kernels").glob("*.fatbin"))
        assert built and all(len(p.stem) == 64 and p.read_bytes()[:4] == b"\x50\xed\x55\xba" for p in built)

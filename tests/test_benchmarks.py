"""The side-by-side benchmarks (benchmarks/): ONNX Runtime and PyTorch baselines, single-op ONNX Runtime
workloads, TVM layer tasks against them, and the end-to-end JSON, on the tiny test models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from benchmarks import baselines, end_to_end, layer_kernels  # noqa: E402
from benchmarks.ort_kernels import (  # noqa: E402
    ort_fused_ops, ort_workload_latency, workload_inputs, workload_model)
from benchmarks.quality import output_quality  # noqa: E402
from tvm_mpq.graph import Workload  # noqa: E402
from tvm_mpq.models import load_model  # noqa: E402

CONV = Workload("conv2d", (1, 8, 10, 10), (16, 8, 3, 3), (1, 16, 5, 5), strides=(2, 2), padding=(1, 1, 1, 1),
                dilation=(1, 1), groups=1, has_bias=True)
DEPTHWISE = Workload("conv2d", (1, 8, 10, 10), (8, 1, 3, 3), (1, 8, 10, 10), strides=(1, 1), padding=(1, 1, 1, 1),
                     dilation=(1, 1), groups=8, has_bias=False)
LINEAR = Workload("linear", (1, 16, 64), (32, 64), (1, 16, 32), has_bias=True)
MATMUL = Workload("matmul", (1, 4, 16, 8), (1, 4, 8, 16), (1, 4, 16, 16))


def _stats_sane(s: dict, repeats: int):
    assert s["repeats"] == repeats
    assert 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"]
    assert 0 <= s["iqr_ms"] <= s["max_ms"] - s["min_ms"] + 1e-12


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(workload, precision, feeds):
    from benchmarks import ort

    sess = ort.session(workload_model(workload, precision).SerializeToString())
    return sess.run(None, feeds)[0]


def _torch_op(wl, x, w, b):
    if wl.op == "conv2d":
        top, left, bottom, right = wl.padding
        x = torch.nn.functional.pad(x, (left, right, top, bottom))
        return torch.nn.functional.conv2d(x, w, b, stride=wl.strides, dilation=wl.dilation, groups=wl.groups)
    if wl.op == "linear":
        return torch.nn.functional.linear(x, w, b)
    return x @ w


@pytest.mark.parametrize("wl", [CONV, DEPTHWISE, LINEAR, MATMUL], ids=["conv", "depthwise", "linear", "matmul"])
def test_ort_workload_fp32_matches_torch(wl):
    model = workload_model(wl, "fp32")
    init = _initializers(model)
    feeds = workload_inputs(wl, "fp32")
    y = _run(wl, "fp32", feeds)
    x = torch.from_numpy(feeds["x"])
    w = torch.from_numpy(np.array(feeds["b"] if wl.op == "matmul" else init["w"]))
    b = torch.from_numpy(np.array(init["bias"])) if "bias" in init else None
    ref = _torch_op(wl, x, w, b).numpy()
    assert y.shape == (ref.reshape(-1, ref.shape[-1]).shape if wl.op == "linear" else ref.shape)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wl,fused", [(CONV, "QLinearConv"), (DEPTHWISE, "QLinearConv"), (LINEAR, "QGemm"),
                                      (MATMUL, "QLinearMatMul")], ids=["conv", "depthwise", "linear", "matmul"])
def test_ort_workload_int8_is_one_fused_integer_kernel_with_qdq_numerics(wl, fused):
    ops = ort_fused_ops(wl, "int8")
    assert fused in ops and not {"DequantizeLinear", "QuantizeLinear", "Conv", "Gemm", "MatMul"} & set(ops), ops
    init = _initializers(workload_model(wl, "int8"))
    feeds = workload_inputs(wl, "int8")
    assert all(a.dtype == np.uint8 for a in feeds.values())
    # Activations below 128: ONNX Runtime's u8 x s8 kernels on AVX2 (vpmaddubsw) saturate int16 pair sums
    # for larger ones (its documented behaviour without VNNI); below 128 the integer result is exact.
    feeds = {k: a // 2 for k, a in feeds.items()}
    y = _run(wl, "int8", feeds)
    assert y.dtype == np.uint8
    # NumPy/torch reference of the QDQ graph: dequantize, float op, quantize (round half to even, clamp)
    deq = lambda a: (a.astype(np.float64) - 128) * 0.02  # noqa: E731
    x = torch.from_numpy(deq(feeds["x"]))
    if wl.op == "matmul":
        w, b = torch.from_numpy(deq(feeds["b"])), None
    else:
        scale = init["w_scale"].astype(np.float64).reshape((-1,) + (1,) * (init["w_q"].ndim - 1))
        w = torch.from_numpy(init["w_q"] * scale)
        b = torch.from_numpy(init["bias_q"] * init["bias_scale"].astype(np.float64)) if "bias_q" in init else None
    ref = _torch_op(wl, x, w, b).numpy().reshape(y.shape)
    q = np.clip(np.round(ref / 0.05) + 128, 0, 255)
    diff = np.abs(q - y.astype(np.float64))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.95, (diff.max(), np.mean(diff == 0))
    assert 0 < np.mean((y > 0) & (y < 255))  # not all saturated: the graph computes something


def test_ort_workload_latency_stats_and_bad_precision():
    for precision in ("fp32", "INT8"):
        _stats_sane(ort_workload_latency(CONV, precision, repeat=3, warmup=1, min_repeat_ms=1).to_dict(), 3)
    with pytest.raises(ValueError, match="precision"):
        ort_workload_latency(CONV, "int4")


@pytest.fixture(scope="module")
def tiny_cnn_baselines():
    spec = load_model("tiny_cnn")
    calib, held_out = baselines.split_samples(spec, 8, 4)
    labeled = [s for s in spec.calibration(12)[8:]]
    return spec, held_out, baselines.run_baselines(spec, calib, held_out, batches=(1, 2), repeat=3, warmup=1,
                                                   labeled_inputs=labeled, labeled_batch=2)


def test_baselines_tiny_cnn(tiny_cnn_baselines):
    spec, held_out, results = tiny_cnn_baselines
    assert list(results) == [baselines.TORCH_FP32, baselines.ORT_FP32, baselines.ORT_STATIC_INT8,
                             baselines.ORT_STATIC_INT8_RR]  # no dynamic int8 for a CNN
    for r in results.values():
        assert set(r.latency) == {1, 2}
        for stats in r.latency.values():
            _stats_sane(stats.to_dict(), 3)
        assert r.outputs.shape == (len(held_out), 10)
        assert r.labeled_outputs.shape == (4, 10)
    with torch.no_grad():
        expect = torch.cat([spec.module(*s) for s in held_out]).numpy()
    torch_out, ort_out = results[baselines.TORCH_FP32].outputs, results[baselines.ORT_FP32].outputs
    np.testing.assert_allclose(torch_out, expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ort_out, expect, rtol=1e-4, atol=1e-4)  # ORT fp32 runs the same model
    # labeled outputs were run at batch 2 through the dynamic batch axis: same values as batch 1
    np.testing.assert_allclose(results[baselines.ORT_FP32].labeled_outputs,
                               results[baselines.TORCH_FP32].labeled_outputs, rtol=1e-4, atol=1e-4)
    for label in (baselines.ORT_STATIC_INT8, baselines.ORT_STATIC_INT8_RR):
        q = output_quality(expect, results[label].outputs)
        assert 15 < q["sqnr_db"] < 80, label  # quantized (not float) yet close
        assert set(q) >= {"top1_agreement", "top5_agreement"}
    assert output_quality(expect, ort_out)["sqnr_db"] > 80


def test_baselines_dynamic_int8_for_transformers(tmp_path):
    spec = load_model("tiny_transformer")
    calib, _ = baselines.split_samples(spec, 4, 1)
    executors = baselines.baseline_executors(spec, calib, tmp_path)
    assert baselines.ORT_DYNAMIC_INT8 in executors
    x = baselines.batch_of(calib, 3)
    with torch.no_grad():
        expect = spec.module(*(torch.from_numpy(a) for a in x)).numpy()
    np.testing.assert_allclose(executors[baselines.ORT_FP32](x), expect, rtol=1e-4, atol=1e-4)
    assert output_quality(expect, executors[baselines.ORT_DYNAMIC_INT8](x))["sqnr_db"] > 15


def test_quality_pooled_cosine_and_shape_check():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 5, 4))
    mask = np.ones((3, 5), np.float32)
    mask[:, 3:] = 0
    q = output_quality(ref, ref * 2.0, mask)  # same direction: cosine 1, SQNR 0 dB
    assert math.isclose(q["pooled_cosine_mean"], 1.0) and math.isclose(q["sqnr_db"], 0.0, abs_tol=1e-9)
    with pytest.raises(ValueError, match="shape"):
        output_quality(ref, ref[:2])


def test_kernels_summary_sums_layers_and_geomeans_ratios():
    rows = [{"layers": {"m": ["a", "b"]}, "tvm": {"FP32": {"median_ms": 2.0}}, "ort": {"fp32": {"median_ms": 1.0}},
             "ratios": {"FP32/ort_fp32": 2.0}},
            {"layers": {"m": ["c"], "other": ["x"]}, "tvm": {"FP32": {"median_ms": 4.0}},
             "ort": {"fp32": {"median_ms": 8.0}}, "ratios": {"FP32/ort_fp32": 0.5}}]
    s = layer_kernels.summarize(rows, ["m"])["m"]
    assert s["layers"] == 3
    assert s["sum_of_layers_ms"] == {"tvm FP32": 8.0, "ort fp32": 10.0}
    assert math.isclose(s["geomean_ratio"]["FP32/ort_fp32"], 1.0)


def test_tvm_layer_task_beside_ort(tmp_path):
    from tvm_mpq.hardware import load_profile
    from tvm_mpq.measure import TimingConfig

    profile = load_profile("x86_avx2")
    timing = layer_kernels.tvm_layer_latency(DEPTHWISE, "conv2d", "W8A8", profile.tvm_target(), tmp_path,
                                       TimingConfig(number=1, repeat=3, warmup=1))
    _stats_sane(layer_kernels._stats(timing), 3)


def test_end_to_end_tiny_cnn_json(tmp_path):
    result = end_to_end.run(["tiny_cnn"], fast=True, batches=(1, 2), repeat=3, labeled=0,
                            include_search_plans=False, tvm_plans={"TVM FP32": "fp32", "TVM W8A8": "w8a8"},
                            log=lambda m: None)
    text = json.dumps(result, allow_nan=False)  # strict JSON: no inf / nan
    m = result["machine"]
    assert m["date"] and m["commit"] and isinstance(m["cpu_flags"], list) and m["cores"] >= 1
    assert result["threads"] == 2 and result["batches"] == [1, 2] and len(result["load_average"]["before"]) == 3
    model = result["models"]["tiny_cnn"]
    assert model["calibration_samples"] == baselines.FAST_SAMPLES[0]
    rows = model["rows"]
    assert set(rows) == {"PyTorch fp32", "ORT fp32", "ORT static int8", "ORT static int8 reduce_range", "TVM FP32",
                         "TVM W8A8"}
    for label, row in rows.items():
        assert set(row["latency_ms"]) == {"1", "2"}
        for stats in row["latency_ms"].values():
            _stats_sane(stats, 3)
        # batch 1 also timed side by side with every other row: 3 rounds x 3 calls
        assert set(row["latency_interleaved_ms"]) == {"1"}, label
        _stats_sane(row["latency_interleaved_ms"]["1"], 9)
    assert result["interleaved_rounds"] == 3
    assert rows["PyTorch fp32"]["quality"]["sqnr_db"] is None  # the reference itself (inf → null)
    assert rows["ORT fp32"]["quality"]["sqnr_db"] > 80
    assert rows["TVM FP32"]["quality"]["sqnr_db"] > 80
    assert 20 < rows["TVM W8A8"]["quality"]["sqnr_db"] < 80
    assert rows["TVM W8A8"]["candidates"] == {"W8A8": 6}
    png = end_to_end.plot(json.loads(text), tmp_path / "e2e.png")
    assert png.stat().st_size > 10_000


def test_workflow_cost_smoke(tmp_path):
    """benchmarks/workflow_cost.py at its smallest: two depths, two calibration sizes, each stage in its own
    spawned process; the JSON carries measured times, per-stage peak RSS and finite fitted exponents."""
    from benchmarks import workflow_cost

    argv = ["--depths", "1,2", "--calib-sizes", "8,16", "--ref-blocks", "1", "--ref-calib", "8",
            "--candidates", "W8A8,FP32", "--quick-timing", "--out-dir", str(tmp_path)]
    assert workflow_cost.main(argv) == 0
    result = json.loads((tmp_path / "workflow_cost.json").read_text())
    m = result["machine"]
    assert m["date"] and m["commit"] and isinstance(m["cpu_flags"], list) and m["cores"] >= 1
    assert len(result["load_average"]["start"]) == 3 and len(result["load_average"]["end"]) == 3
    prof, srch = result["workflow"]["profiling"], result["workflow"]["search"]
    assert prof["blocks"] == 1 and prof["layers"] == 3 and prof["tasks"] == prof["layer_tasks"] + prof["convert_tasks"] > 0
    assert prof["profile_s"] > 0 and prof["peak_rss_mib"] >= prof["rss_after_imports_mib"] > 0
    assert prof["measure"] == {"number": 1, "repeat": 2, "min_repeat_ms": 0, "tuning_trials": 0}
    assert srch["calib_samples"] == 8 and srch["latency_sources"] == {"measured": 3 * 2}  # all from the fresh store
    assert all(srch["timings_s"][k] > 0 for k in workflow_cost.PHASES)
    assert srch["peak_rss_mib"] >= srch["rss_after_imports_mib"] > 0
    rows = result["depth_sweep"]["rows"]
    assert [r["blocks"] for r in rows] == [1, 2] and rows[0]["tasks"] < rows[1]["tasks"]
    assert [r["calib_samples"] for r in result["calib_sweep"]["rows"]] == [8, 16]
    for sweep, names in (("depth_sweep", {"profiling", "profiling vs tasks", "search total"}),
                         ("calib_sweep", {"search calibrate", "search phase1", "search total"})):
        fits = result[sweep]["fits"]
        assert names <= set(fits)
        for f in fits.values():
            assert math.isfinite(f["loglog"]["exponent"]) and math.isfinite(f["linear"]["slope_s_per_unit"])
            assert len(f["loglog"]["residuals_log"]) == len(f["sizes"]) == 2 and all(t > 0 for t in f["times_s"])
    assert (tmp_path / "workflow_cost.png").stat().st_size > 10_000


def test_workflow_cost_fit_and_bad_arguments():
    from benchmarks import workflow_cost

    n = [2.0, 4.0, 8.0, 16.0]
    f = workflow_cost.fit_trend(n, [3.0 * x ** 1.5 for x in n])  # exact power law: exponent and zero residuals
    assert math.isclose(f["loglog"]["exponent"], 1.5) and math.isclose(f["loglog"]["coefficient_s"], 3.0)
    assert max(abs(r) for r in f["loglog"]["residuals_log"]) < 1e-9
    g = workflow_cost.fit_trend(n, [1.0 + 0.5 * x for x in n])
    assert math.isclose(g["linear"]["intercept_s"], 1.0) and math.isclose(g["linear"]["slope_s_per_unit"], 0.5)
    with pytest.raises(ValueError, match="two distinct"):
        workflow_cost.fit_trend([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError, match="reference model"):
        workflow_cost.check_sizes([2, 4], [16, 32], 8, 16)
    for argv in (["--depths", "4"], ["--depths", "2,x"], ["--candidates", "W3A8"], ["--calib-sizes", "2,3"]):
        with pytest.raises(SystemExit) as err:
            workflow_cost.main(argv)
        assert err.value.code == 2


def test_epilogues_ab_on_tiny_cnn():
    """benchmarks/epilogues.py builds each plan with the current pipeline and with the kernel epilogues /
    packing / softmax changes undone: the integer outputs are identical, every build is timed, and the
    switches are restored afterwards."""
    from benchmarks import epilogues
    from tvm_mpq.kernels import cpu_schedule
    from tvm_mpq.transform import x86_avx2_lowering as low

    result = epilogues.run(["tiny_cnn"], ["W8A8"], rounds=2)
    row = result["models"]["tiny_cnn"]["W8A8"]
    assert row["current"]["median_ms"] > 0 and len(row["variants"]) == len(epilogues.VARIANTS) - 1
    for variant in row["variants"].values():
        assert variant["max_abs_output_difference"] == 0.0
        assert variant["ratio_current_over_variant"] == row["current"]["median_ms"] / variant["latency"]["median_ms"]
    assert low.UNFUSED_PACKING and cpu_schedule.SPLIT_SOFTMAX and cpu_schedule.FUSE_KERNEL_EPILOGUES
    assert cpu_schedule.FAST_LAYER_NORM


def test_stage_peak_rss_is_the_childs_own():
    """A stage spawned by a large process reports its own peak RSS, not the parent's (`ru_maxrss` would)."""
    from benchmarks import workflow_cost

    ballast = bytearray(1 << 30)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page: 1 GiB resident here
    assert workflow_cost.peak_rss_mib() >= 1024
    assert workflow_cost.in_child(workflow_cost.peak_rss_mib) < 700
    del ballast


def test_bias_correction_ab_on_tiny_cnn():
    """benchmarks/bias_correction.py scores each plan with and without the corrections on the same data."""
    from benchmarks import bias_correction

    result = bias_correction.run_model("tiny_cnn", 16, 8)
    homogeneous = result["homogeneous"]
    assert set(homogeneous) == {"W8A8", "W8A16", "W4A8"}
    for r in (*homogeneous.values(), *result["groups_w8a8_alone"].values()):
        assert np.isfinite(r["plain_db"]) and np.isfinite(r["corrected_db"])
        assert r["gain_db"] == r["corrected_db"] - r["plain_db"]
    assert any(r["gain_db"] != 0 for r in homogeneous.values())  # the two runs differ: the switch took effect
    assert len(result["groups_w8a8_alone"]) >= 2


def test_run_all_fast_writes_every_result():
    """`python benchmarks/run_all.py --fast`, the one command behind every benchmark, at its smallest: each
    step writes its JSON (and plots) under benchmarks/results/fast/ with the machine it ran on."""
    from benchmarks import run_all
    from benchmarks.common import results_dir

    out = results_dir(fast=True)
    names = ("end_to_end.json", "kernels.json", "workflow_cost.json", "epilogues.json", "bias_correction.json")
    for name in names:
        (out / name).unlink(missing_ok=True)
    assert run_all.main(["--fast"]) == 0
    for name in names:
        data = json.loads((out / name).read_text())
        assert data["machine"]["date"] and data["machine"]["commit"], name
    assert (out / "end_to_end.png").stat().st_size > 10_000


def test_readme_table_renders_both_runs_and_plan_targets(tmp_path):
    from benchmarks import readme_table

    plan_dir = tmp_path / "search_x"
    plan_dir.mkdir()
    (plan_dir / "report.json").write_text(json.dumps(
        {"selection": {"message": "point #3 of 9 (cost 1.2) reaches 30.2 >= target 30; binary search"}}))

    def run(alone, side):
        stats = lambda ms: {"1": {"median_ms": ms}}  # noqa: E731
        rows = {"ORT fp32": {"latency_ms": stats(alone), "latency_interleaved_ms": stats(side),
                             "quality": {"sqnr_db": 117.71, "top1_agreement": 1.0}},
                "TVM mixed latency-aware (search_x)": {
                    "plan": str(plan_dir / "plan.yaml"), "candidates": {"FP32": 2, "W8A8": 5},
                    "latency_ms": stats(alone / 2), "latency_interleaved_ms": stats(side / 2),
                    "quality": {"sqnr_db": 30.26, "pooled_cosine_mean": 0.99631}}}
        return {"models": {"efficientnet_lite0": {"rows": rows}}}

    lines = readme_table.render([run(4.0, 5.0), run(6.0, 7.0)],
                                bold=("TVM mixed latency-aware (search_x)",)).splitlines()
    assert lines[2] == "| EfficientNet-Lite0 | ORT fp32 | 4.00 / 6.00 | 5.00 / 7.00 | 117.7 dB, top-1 100 % |"
    assert lines[3] == ("|  | **TVM mixed latency-aware, 30 dB (5 W8A8 / 2 FP32)** | 2.00 / 3.00 | 2.50 / 3.50 | "
                        "30.3 dB, cos 0.9963 |")


def test_a16_layers_smoke(tmp_path):
    """The byte-plane W8A16 benchmark: both W8A16 paths agree, every build is timed, the switch is restored."""
    from tvm_mpq.kernels import host_runs
    from tvm_mpq.transform import x86_avx2_lowering

    if not host_runs("x86_avx512_vnni"):
        pytest.skip("this CPU cannot run the x86_avx512_vnni kernels")
    from benchmarks import a16_layers

    out = tmp_path / "a16.json"
    assert a16_layers.main(["--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["blocks"]) == {"ffn", "pointwise"}
    for row in result["blocks"].values():
        assert row["identical_w8a16_outputs"] is True
        assert set(row["latency"]) == {"FP32", "W8A8", "W8A16", "W8A16 generic"}
        assert all(v["median_ms"] > 0 and v["repeats"] == 5 for v in row["latency"].values())
    assert x86_avx2_lowering.A16_PLANES is True


def test_a16_depthwise_smoke(tmp_path):
    """The 16-bit depthwise benchmark: the byte-plane and both generic W8A16 builds agree, every build is timed,
    the switches it flips are restored."""
    from tvm_mpq import numerics
    from tvm_mpq.kernels import host_runs
    from tvm_mpq.transform import x86_avx2_lowering

    if not host_runs("x86_avx2"):
        pytest.skip("this CPU cannot run the x86_avx2 kernels")
    from benchmarks import a16_depthwise

    chosen = numerics.accumulator_dtype
    out = tmp_path / "a16_depthwise.json"
    assert a16_depthwise.main(["--hw", "x86_avx2", "--rounds", "1", "--blocks", "dw5x5_672x14", "--out",
                               str(out)]) == 0
    (row,) = json.loads(out.read_text())["blocks"].values()
    assert row["identical_w8a16_outputs"] is True
    assert set(row["latency"]) == {"FP32", "W8A8", "W8A16", "W8A16 generic int32", "W8A16 generic int64"}
    assert all(v["median_ms"] > 0 for v in row["latency"].values())
    assert x86_avx2_lowering.A16_PLANES is True and numerics.accumulator_dtype is chosen


def test_smoothing_ab_on_tiny_transformer():
    """benchmarks/smoothing.py scores W8A8 with and without smoothing on the same data and times both builds
    side by side."""
    from benchmarks import smoothing

    result = smoothing.run_model("tiny_transformer", "x86_avx2", 16, 8, rounds=2)
    w8a8 = result["w8a8"]
    assert w8a8["smoothed_layers"] > 0
    assert w8a8["gain_db"] == pytest.approx(w8a8["smoothed_db"] - w8a8["plain_db"])
    assert w8a8["plain_db"] != w8a8["smoothed_db"]  # the factors changed the quantized model
    assert result["groups_w8a8_alone"]
    lat = result["latency_interleaved"]
    assert lat["W8A8 plain"]["median_ms"] > 0 and lat["W8A8 smoothed"]["median_ms"] > 0
    assert lat["ratio_smoothed_to_plain"] == pytest.approx(
        lat["W8A8 smoothed"]["median_ms"] / lat["W8A8 plain"]["median_ms"])

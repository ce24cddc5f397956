"""CPU schedules of the functions the kernels leave to TVM: requantize epilogues compiled through the
project's CPU pipeline are vector code (not the scalar loop TVM makes of `nearbyint`) and match NumPy on
rows that are not a multiple of the vector width (the scalar tail), on one flat loop and on a layout change."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_mpq.build import compile_module

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2"})


def _requantize_module(shape, channels_axis=True):
    """int32 accumulator → × scale + bias → ReLU6 → quantize (round half to even, zero point 3) → uint8."""
    bb = relax.BlockBuilder()
    pshape = [1] * len(shape)
    if channels_axis and len(shape) > 1:
        pshape[1] = shape[1]
    x = relax.Var("x", relax.TensorType(shape, "int32"))
    s = relax.Var("s", relax.TensorType(pshape, "float32"))
    b = relax.Var("b", relax.TensorType(pshape, "float32"))
    with bb.function("main", [x, s, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.multiply(relax.op.astype(x, "float32"), s), b))
            y = bb.emit(relax.op.clip(y, 0.0, 6.0))
            y = bb.emit(relax.op.add(relax.op.round(relax.op.divide(y, relax.const(np.float32(0.05)))),
                                     relax.const(np.float32(3.0))))
            y = bb.emit(relax.op.astype(relax.op.clip(y, 0.0, 255.0), "uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), pshape


def _reference(x, s, b):
    y = np.clip(x.astype(np.float32) * s + b, 0.0, 6.0)
    return np.clip(np.rint(y / np.float32(0.05)) + 3.0, 0, 255).astype(np.uint8)


def _llvm_ir(executable) -> str:
    for mod in [executable.mod, *executable.mod.imports]:
        try:
            src = mod.inspect_source("ll")
        except Exception:  # a module kind without LLVM source
            continue
        if src:
            return src
    raise AssertionError("no LLVM IR in the compiled module")


@pytest.mark.parametrize("shape", [(1, 5, 14, 14), (1, 3, 7, 7), (1, 2, 112, 112), (1, 4, 28, 28), (2, 3, 5, 9),
                                   (37,), (1, 6, 1, 1)])
def test_requantize_epilogue_matches_numpy_and_is_vectorized(shape):
    mod, pshape = _requantize_module(shape)
    ex = compile_module(mod, TARGET)
    rng = np.random.default_rng(0)
    x = rng.integers(-4000, 4000, size=shape, dtype=np.int32)
    # scales putting many values exactly on .5 quantization steps (round half to even matters there)
    s = np.full(pshape, 0.025, np.float32)
    b = rng.uniform(-1, 1, size=pshape).astype(np.float32)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, s, b))).numpy()
    np.testing.assert_array_equal(got, _reference(x, s, b))
    ir = _llvm_ir(ex)
    n_inner = shape[-1] * (shape[-2] if len(shape) > 1 and shape[-1] * shape[-2] <= 256 else 1)
    if n_inner >= 8:
        assert "llvm.nearbyint.v8f32" in ir, "the quantize was not compiled to vector code"
    assert not re.search(r"for_begin_\w+\.s\.preheader:", ir), "TVM scalarized a vectorized loop"


def test_layout_change_with_short_last_axis_is_correct():
    """A transpose into a [.., 2] innermost axis (like operand packing) stays on the gather-free schedule."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 6, 10), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.permute_dims(relax.op.add(x, relax.const(np.float32(1.0))), [0, 2, 3, 1]))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = compile_module(bb.get(), TARGET)
    a = np.random.default_rng(1).normal(size=(1, 2, 6, 10)).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a)).numpy()
    np.testing.assert_array_equal(got, np.transpose(a + 1.0, (0, 2, 3, 1)))


def test_softmax_is_split_into_vector_passes_and_matches_numpy():
    """Softmax compiles to max / exp / sum / divide passes with the polynomial exp (vector code, no libm
    `expf` call), within float32 rounding of NumPy, on a row length that is not a multiple of 8."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 5, 37), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.softmax(x, axis=-1)))
        bb.emit_func_output(out)
    ex = compile_module(bb.get(), TARGET)
    a = (np.random.default_rng(2).normal(size=(1, 3, 5, 37)) * 8).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(a)).numpy()
    e = np.exp(a.astype(np.float64) - a.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(axis=-1, keepdims=True), rtol=2e-6, atol=1e-7)
    ir = _llvm_ir(ex)
    assert "@expf" not in ir, "softmax still calls scalar libm expf"
    assert re.search(r"fmul <8 x float>|fmul fast <8 x float>", ir), "softmax's exp is not vector code"


@pytest.mark.parametrize("lanes", [8, pytest.param(16, marks=pytest.mark.skipif(
    not __import__("tvm_mpq.kernels", fromlist=["host_runs"]).host_runs("x86_avx512"), reason="no AVX-512 here"))])
@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 5), (6, 128), (3, 1)])
def test_row_reduce_matches_numpy(shape, lanes):
    """The vectorized row max is exact and the row sum within float32 rounding of NumPy, on rows shorter than
    a vector, with a scalar tail, and of whole vectors."""
    from tvm_mpq.kernels.row_reduce import row_reduce_func

    target = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2" if lanes == 8 else "cascadelake"})
    a = (np.random.default_rng(len(shape)).normal(size=shape) * 5).astype(np.float32)
    for op, ref in (("max", a.max(axis=-1, keepdims=True)), ("sum", a.astype(np.float64).sum(axis=-1, keepdims=True))):
        lib = tvm.compile(row_reduce_func(shape, op, lanes), target=target).jit()
        out = tvm.runtime.tensor(np.zeros(shape[:-1] + (1,), np.float32))
        lib["main"](tvm.runtime.tensor(a), out)
        if op == "max":
            np.testing.assert_array_equal(out.numpy(), ref)
        else:
            np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="op"):
        row_reduce_func(shape, "min")


@pytest.mark.parametrize("env, expected", [(None, len(__import__("os").sched_getaffinity(0))), ("1", 1)])
def test_tvm_thread_pool_uses_every_cpu_unless_told(env, expected):
    """TVM alone halves the CPU count (hyper-threading guess): 1 thread on a 2-vCPU machine."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if env is not None:
        environ["TVM_NUM_THREADS"] = env
    out = subprocess.run([sys.executable, "-c", "import tvm_mpq, tvm; print(tvm.get_global_func('runtime.NumThreads')())"],
                         env=environ, capture_output=True, text=True, check=True).stdout.split()[-1]
    assert int(out) == expected


def _layer_norm_reference(x, gamma, beta, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("lanes", [8, pytest.param(16, marks=pytest.mark.skipif(
    not __import__("tvm_mpq.kernels", fromlist=["host_runs"]).host_runs("x86_avx512"), reason="no AVX-512 here"))])
@pytest.mark.parametrize("shape", [(2, 3, 37), (4, 384), (3, 5), (2, 1)])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_kernel_matches_numpy(shape, lanes, residual):
    """The vectorized layer norm (and its residual form, the norm of a sum) is within float32 rounding of the
    float64 NumPy layer norm, on rows shorter than a vector, with a scalar tail and of whole vectors; rows
    with a large mean keep their small spread (two-pass variance)."""
    from tvm_mpq.kernels.layer_norm import layer_norm_func

    target = tvm.target.Target({"kind": "llvm", "mcpu": "core-avx2" if lanes == 8 else "cascadelake"})
    rng = np.random.default_rng(len(shape))
    x = (rng.normal(size=shape) * 0.5 + 100.0).astype(np.float32)
    r = rng.normal(size=shape).astype(np.float32)
    gamma, beta = (rng.normal(size=shape[-1]).astype(np.float32) for _ in range(2))
    lib = tvm.compile(layer_norm_func(shape, 1e-5, lanes, residual=residual), target=target).jit()
    out = tvm.runtime.tensor(np.zeros(shape, np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in ([x, r] if residual else [x]) + [gamma, beta]), out)
    want = _layer_norm_reference(x.astype(np.float64) + r if residual else x, gamma, beta, 1e-5)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=2e-4 if shape[-1] > 1 else 1e-6)
    with pytest.raises(ValueError, match="lanes"):
        layer_norm_func(shape, 1e-5, 4)


def test_layer_norms_lower_to_the_kernel_and_fold_their_residual_add():
    """Through the CPU pipeline: LayerNorm(a + b) becomes one `add_layer_norm` call (the add folded in),
    a layer norm whose input add is used twice keeps the add, and a layer norm over another axis stays TVM's;
    every output matches NumPy."""
    from tvm_mpq.transform.lower_layer_norm import lower_layer_norm

    shape = (1, 6, 40)
    bb = relax.BlockBuilder()
    a, b = (relax.Var(n, relax.TensorType(shape, "float32")) for n in "ab")
    g, be = (relax.Var(n, relax.TensorType((40,), "float32")) for n in ("g", "be"))
    g6, be6 = (relax.Var(n, relax.TensorType((6,), "float32")) for n in ("g6", "be6"))
    with bb.function("main", [a, b, g, be, g6, be6]):
        with bb.dataflow():
            y1 = bb.emit(relax.op.nn.layer_norm(bb.emit(relax.op.add(a, b)), g, be, axes=[-1], epsilon=1e-6))
            s = bb.emit(relax.op.add(y1, b))  # used by the norm and by the output: stays
            y2 = bb.emit(relax.op.nn.layer_norm(s, g, be, axes=[-1], epsilon=1e-6))
            y3 = bb.emit(relax.op.nn.layer_norm(a, g6, be6, axes=[1], epsilon=1e-6))
            out = bb.emit_output(relax.Tuple([y2, s, y3]))
        bb.emit_func_output(out)
    mod = bb.get()
    lowered = lower_layer_norm(mod, lanes=8)
    names = sorted(gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    assert names == ["add_layer_norm", "layer_norm"], names
    text = lowered.script()
    assert text.count("R.nn.layer_norm") == 1 and text.count("R.add(") == 1, text

    ex = compile_module(mod, TARGET)
    rng = np.random.default_rng(3)
    av, bv = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
    gv_, bev = (rng.normal(size=40).astype(np.float32) for _ in range(2))
    g6v, be6v = (rng.normal(size=6).astype(np.float32) for _ in range(2))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(v) for v in (av, bv, gv_, bev, g6v, be6v)))
    y1 = _layer_norm_reference(av.astype(np.float64) + bv, gv_, bev, 1e-6)
    sv = y1 + bv
    np.testing.assert_allclose(got[1].numpy(), sv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0].numpy(), _layer_norm_reference(sv, gv_, bev, 1e-6), rtol=1e-4, atol=1e-4)
    a_t = np.swapaxes(av, 1, 2)
    want3 = np.swapaxes(_layer_norm_reference(a_t, g6v, be6v, 1e-6), 1, 2)
    np.testing.assert_allclose(got[2].numpy(), want3, rtol=1e-4, atol=1e-4)


def test_elementwise_functions_use_the_targets_vector_width():
    """On an AVX-512 target the elementwise schedule vectorizes by 16 lanes (8 on AVX2), same results."""
    mod, pshape = _requantize_module((1, 4, 28, 28))
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    ex = compile_module(mod, target)
    assert "llvm.nearbyint.v16f32" in _llvm_ir(ex)
    if __import__("tvm_mpq.kernels", fromlist=["host_runs"]).host_runs("x86_avx512"):
        rng = np.random.default_rng(5)
        x = rng.integers(-4000, 4000, size=(1, 4, 28, 28), dtype=np.int32)
        s = np.full(pshape, 0.025, np.float32)
        b = rng.uniform(-1, 1, size=pshape).astype(np.float32)
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](*(tvm.runtime.tensor(a) for a in (x, s, b))).numpy()
        np.testing.assert_array_equal(got, _reference(x, s, b))

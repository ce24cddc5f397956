"""Hardware profile loading and validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tvm_mpq import hardware, numerics
from tvm_mpq.hardware import HardwareProfile, ProfileError, load_profile

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "hw_profiles" / "x86_avx2.yaml"


def _base() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def _write(tmp_path: Path, data, name: str = "bad_profile.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_shipped_profile_loads():
    prof = load_profile("x86_avx2")
    assert isinstance(prof, HardwareProfile)
    assert prof.name == "x86_avx2"
    assert prof.target == {"kind": "llvm", "mcpu": "core-avx2"}
    assert prof.host is None
    assert prof.candidates["conv2d"] == ("W8A8", "W4A8", "W8A16", "FP32")
    assert prof.candidates["matmul"] == ("W8A8", "W8A16", "FP32")
    assert prof.constraints.unified_input_ops == ()
    assert prof.constraints.int4_channel_multiple == 1
    assert (prof.measure.number, prof.measure.repeat, prof.measure.min_repeat_ms, prof.measure.tuning_trials) == (
        1, 5, 50, 0)
    assert prof.rpc_key is None
    assert prof.roofline.peak_gops["W8A8"] == 300 and prof.roofline.memory_gbps == 40
    assert prof.source == SHIPPED.resolve()
    cands = prof.candidates_for("linear")
    assert all(isinstance(c, numerics.Candidate) for c in cands)
    assert [c.name for c in cands] == ["W8A8", "W4A8", "W8A16", "FP32"]
    assert prof.candidates_for("layer_norm") == (numerics.CANDIDATES["FP32"],)
    assert prof.supports("conv2d", "W4A8") and prof.supports("conv2d", "w8a8")
    assert not prof.supports("matmul", "W4A8")
    assert prof.supports("softmax", "FP32") and not prof.supports("softmax", "W8A8")


def test_frozen_and_roundtrip(tmp_path):
    prof = load_profile(str(SHIPPED))
    with pytest.raises(Exception):
        prof.name = "other"  # type: ignore[misc]
    d = prof.to_dict()
    assert d["schema_version"] == 1 and d["candidates"]["linear"] == ["W8A8", "W4A8", "W8A16", "FP32"]
    again = load_profile(str(_write(tmp_path, d, "roundtrip.yaml")))
    assert again.to_dict() == d


def test_tvm_target():
    tvm = pytest.importorskip("tvm")
    t = load_profile("x86_avx2").tvm_target()
    assert isinstance(t, tvm.target.Target)
    assert t.kind.name == "llvm"
    assert str(t.attrs["mcpu"]) == "core-avx2"


def test_resolution_by_path_and_env(tmp_path, monkeypatch):
    data = _base()
    data["name"] = "my_board"
    p = _write(tmp_path, data, "my_board.yaml")
    assert load_profile(str(p)).name == "my_board"
    assert load_profile(p).source == p.resolve()
    with pytest.raises(ProfileError, match="my_board"):
        load_profile("my_board")
    monkeypatch.setenv("TVM_MPQ_PROFILES", str(tmp_path))
    assert load_profile("my_board").name == "my_board"
    assert "my_board" in hardware.available_profiles() and "x86_avx2" in hardware.available_profiles()
    assert load_profile("x86_avx2").name == "x86_avx2"


def test_unknown_name_lists_available():
    with pytest.raises(ProfileError) as ei:
        load_profile("no_such_board")
    msg = str(ei.value)
    assert "no_such_board" in msg and "x86_avx2" in msg


def test_missing_file_path():
    with pytest.raises(ProfileError, match="nowhere.yaml"):
        load_profile("/definitely/not/here/nowhere.yaml")


def _mutations():
    def m(fn):
        d = _base()
        fn(d)
        return d

    return {
        # id: (data, field expected in the message, extra text expected)
        "unknown_top_key": (m(lambda d: d.update(frobnicate=1)), "frobnicate", "allowed"),
        "schema_version": (m(lambda d: d.update(schema_version=2)), "schema_version", "allowed: 1"),
        "missing_name": (m(lambda d: d.pop("name")), "name", "missing"),
        "missing_target": (m(lambda d: d.pop("target")), "target", "missing"),
        "missing_candidates": (m(lambda d: d.pop("candidates")), "candidates", "missing"),
        "target_no_kind": (m(lambda d: d.update(target={"mcpu": "core-avx2"})), "target.kind", "missing"),
        "target_wrong_type": (m(lambda d: d.update(target="llvm -mcpu=core-avx2")), "target", "dict"),
        "host_no_kind": (m(lambda d: d.update(host={"mtriple": "x86_64"})), "host.kind", "missing"),
        "name_wrong_type": (m(lambda d: d.update(name=5)), "name", "string"),
        "unknown_candidate": (m(lambda d: d["candidates"].update(conv2d=["W8A8", "W3A3"])), "candidates.conv2d",
                              "W4A16"),
        "unknown_op_type": (m(lambda d: d["candidates"].update(pooling=["FP32"])), "candidates.pooling",
                            "conv2d, linear, matmul"),
        "candidates_not_list": (m(lambda d: d["candidates"].update(linear="W8A8")), "candidates.linear", "list"),
        "duplicate_candidate": (m(lambda d: d["candidates"].update(linear=["W8A8", "W8A8"])), "candidates.linear",
                                "duplicate"),
        "matmul_int4": (m(lambda d: d["candidates"].update(matmul=["W4A8"])), "candidates.matmul", "allowed"),
        "constraint_unknown_key": (m(lambda d: d["constraints"].update(foo=1)), "constraints.foo", "allowed"),
        "constraint_bad_op": (m(lambda d: d["constraints"].update(unified_input_ops=["softmax"])),
                              "constraints.unified_input_ops", "concat"),
        "int4_multiple_type": (m(lambda d: d["constraints"].update(int4_channel_multiple="two")),
                               "constraints.int4_channel_multiple", "integer"),
        "int4_multiple_zero": (m(lambda d: d["constraints"].update(int4_channel_multiple=0)),
                               "constraints.int4_channel_multiple", ">= 1"),
        "measure_bool": (m(lambda d: d["measure"].update(number=True)), "measure.number", "integer"),
        "measure_unknown_key": (m(lambda d: d["measure"].update(warmup=3)), "measure.warmup", "allowed"),
        "rpc_key_type": (m(lambda d: d.update(rpc_key=["a"])), "rpc_key", "string"),
        "roofline_candidate": (m(lambda d: d["roofline"]["peak_gops"].update(INT2=5)), "roofline.peak_gops",
                               "W8A8"),
        "roofline_negative": (m(lambda d: d["roofline"].update(memory_gbps=-1)), "roofline.memory_gbps", "positive"),
        "roofline_missing": (m(lambda d: d["roofline"].pop("memory_gbps")), "roofline.memory_gbps", "missing"),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_bad_profiles_raise(tmp_path, case):
    data, fld, extra = MUTATIONS[case]
    p = _write(tmp_path, copy.deepcopy(data), f"bad_{case}.yaml")
    with pytest.raises(ProfileError) as ei:
        load_profile(str(p))
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert f"bad_{case}.yaml" in msg, msg
    assert fld in msg, msg
    assert extra in msg, msg


def test_bad_yaml_and_non_mapping(tmp_path):
    p = _write(tmp_path, "name: [unclosed\n", "broken.yaml")
    with pytest.raises(ProfileError, match="broken.yaml"):
        load_profile(str(p))
    p = _write(tmp_path, "- just\n- a list\n", "listy.yaml")
    with pytest.raises(ProfileError, match="listy.yaml"):
        load_profile(str(p))


def test_optional_sections_default(tmp_path):
    d = {"schema_version": 1, "name": "tiny", "target": {"kind": "llvm"}, "candidates": {"linear": ["w8a8", "fp32"]}}
    prof = load_profile(str(_write(tmp_path, d, "tiny.yaml")))
    assert prof.candidates == {"linear": ("W8A8", "FP32")}
    assert prof.measure == hardware.MeasureConfig() and prof.constraints == hardware.Constraints()
    assert prof.roofline is None and prof.rpc_key is None and prof.description == ""
    assert prof.candidates_for("conv2d") == (numerics.CANDIDATES["FP32"],)


def test_host_profile_follows_the_cpu_flags(monkeypatch):
    avx2 = {"avx2", "fma", "sse4_2"}
    vnni = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert hardware.host_profile_name(vnni) == "x86_avx512_vnni"
    assert hardware.host_profile_name(avx2 | {"avx512f", "avx512bw", "avx512vl"}) == "x86_avx2"  # no VNNI
    assert hardware.host_profile_name(avx2) == "x86_avx2"
    with pytest.raises(ProfileError, match="no shipped profile fits this CPU"):
        hardware.host_profile_name({"sse4_2"})
    # `--hw host` loads the profile of the flags /proc/cpuinfo shows
    import tvm_mpq.kernels as kernels

    monkeypatch.setattr(kernels, "host_cpu_flags", lambda: set(avx2))
    assert load_profile("host").name == "x86_avx2"
    monkeypatch.setattr(kernels, "host_cpu_flags", lambda: set(vnni))
    assert load_profile("host").name == "x86_avx512_vnni"

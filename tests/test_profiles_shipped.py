"""Every hardware profile shipped in hw_profiles/ loads, names itself after its file, and describes a TVM
target that TVM 0.27 constructs and LLVM knows (CPU name, features). Fast: no compilation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvm_mpq.hardware import DEFAULT_PROFILES_DIR, OP_TYPES, available_profiles, load_profile

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "hw_profiles"
SHIPPED = sorted(SHIPPED_DIR.glob("*.yaml")) + sorted(SHIPPED_DIR.glob("*.yml"))
EXPECTED = {"x86_avx2", "x86_avx512_vnni", "arm_a76_dotprod", "cuda_sm90", "hexagon_hvx"}

# LLVM features each profile is about: the profile is wrong if its target does not enable them.
REQUIRED_FEATURES = {
    "x86_avx2": ["avx2", "fma"],
    "x86_avx512_vnni": ["avx512f", "avx512bw", "avx512vnni"],
    "arm_a76_dotprod": ["neon", "dotprod", "fullfp16"],
    "hexagon_hvx": ["hvxv68", "hvx-length128b"],
}
# A profile without FP32 in some op's list must say why, in a comment starting with this marker.
NO_FP32_MARKER = "# FP32 not listed:"


def _ids(paths):
    return [p.stem for p in paths]


@pytest.fixture(scope="module")
def tvm():
    return pytest.importorskip("tvm")


def test_default_dir_is_the_shipped_dir():
    assert DEFAULT_PROFILES_DIR.resolve() == SHIPPED_DIR.resolve()


def test_expected_profiles_shipped_and_listed(monkeypatch):
    monkeypatch.delenv("TVM_MPQ_PROFILES", raising=False)
    stems = [p.stem for p in SHIPPED]
    assert EXPECTED <= set(stems), f"missing: {EXPECTED - set(stems)}"
    assert len(stems) == len(set(stems)), f"two files share a stem: {stems}"
    assert EXPECTED <= set(available_profiles())


def test_names_unique_and_equal_file_stem():
    names = [load_profile(p).name for p in SHIPPED]
    assert names == [p.stem for p in SHIPPED]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_profile_loads_by_name_and_path(path):
    by_path = load_profile(path)
    by_name = load_profile(path.stem)
    assert by_name.source == by_path.source == path.resolve()
    assert by_path.description.strip()
    assert set(by_path.candidates) == set(OP_TYPES), "every profile states all op types explicitly"


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_fp32_listed_or_its_absence_documented(path):
    prof = load_profile(path)
    without = [op for op, names in prof.candidates.items() if "FP32" not in names]
    if without:
        assert NO_FP32_MARKER in path.read_text(encoding="utf-8"), (
            f"{path.name}: {', '.join(without)} list no FP32; explain in a comment starting {NO_FP32_MARKER!r}")


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_roofline_covers_every_listed_candidate(path):
    prof = load_profile(path)
    assert prof.roofline is not None, "shipped profiles carry a roofline for unmeasured workloads"
    listed = {n for names in prof.candidates.values() for n in names}
    missing = sorted(n for n in listed | {"FP32"} if prof.roofline.peak_for(n) is None)
    assert not missing, f"{path.name}: roofline.peak_gops lacks {missing} (FP32 is always a possible choice)"
    assert prof.roofline.memory_gbps > 0


def _is_cross(target: dict, system_arch: str) -> bool:
    """True where the compiled code does not run on the build machine."""
    if target["kind"] != "llvm":
        return True
    triple = target.get("mtriple")
    return triple is not None and triple.split("-")[0] != system_arch


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_tvm_target_constructs_with_host(path, tvm):
    from tvm.target import codegen

    prof = load_profile(path)
    t = prof.tvm_target()
    assert isinstance(t, tvm.target.Target)
    assert t.kind.name == prof.target["kind"]
    system_arch = codegen.llvm_get_system_triple().split("-")[0]
    if _is_cross(prof.target, system_arch) or prof.rpc_key is not None:
        assert prof.host is not None, f"{path.name}: a cross-compiled or remote profile needs an explicit host"
        assert t.host is not None and t.host.kind.name == prof.host["kind"]
    if prof.host is not None and prof.target["kind"] == "llvm":
        # Both "llvm": TVM 0.27 compiles the kernels for the host too, so the host must be the device CPU.
        assert prof.host.get("mtriple") == prof.target.get("mtriple"), (
            f"{path.name}: an llvm target's host must have the same mtriple, or the kernels are built for the host")


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_llvm_knows_cpu_and_features(path, tvm):
    """`Target(...)` accepts any mcpu string; ask LLVM whether the CPU and the mattr features exist."""
    from tvm.target import codegen

    prof = load_profile(path)
    for role, spec in (("target", prof.target), ("host", prof.host)):
        if spec is None or spec["kind"] not in ("llvm", "hexagon"):
            continue
        probe = {k: spec[k] for k in ("mtriple", "mcpu", "mattr") if k in spec}
        triple = probe.get("mtriple", codegen.llvm_get_system_triple())
        if "mcpu" in probe:
            assert codegen.llvm_is_valid_cpu(probe["mcpu"], triple), f"{path.name}: {role}.mcpu {probe['mcpu']!r}"
        features = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", **probe}))
        unknown = [a for a in probe.get("mattr", []) if a.lstrip("+-") not in features and a.startswith("+")]
        assert not unknown, f"{path.name}: {role}.mattr has features LLVM does not know for {triple}: {unknown}"
        if role == "target":
            lacking = [f for f in REQUIRED_FEATURES.get(prof.name, []) if f not in features]
            assert not lacking, f"{path.name}: target does not enable {lacking}"


def test_mattr_is_a_list_in_every_profile():
    """TVM 0.27 rejects a comma-joined mattr string; catch it without importing TVM."""
    for path in SHIPPED:
        prof = load_profile(path)
        for role, spec in (("target", prof.target), ("host", prof.host)):
            if spec is not None and "mattr" in spec:
                assert isinstance(spec["mattr"], list), f"{path.name}: {role}.mattr must be a list"


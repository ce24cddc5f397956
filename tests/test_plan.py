"""Plans: homogeneous construction, YAML round trip, and refusal of invalid plans with clear messages."""

import pytest
import torch

from tvm_mpq.frontend import import_model
from tvm_mpq.pipeline import make_plan
from tvm_mpq.plan import Plan, PlanError, homogeneous_plan, resolve
from tvm_mpq.simulate import Simulator

from conftest import ToyNet


@pytest.fixture(scope="module")
def toy_ctx():
    imported = import_model(ToyNet().eval(), (torch.randn(1, 3, 16, 16),))
    gen = torch.Generator().manual_seed(0)
    stats = Simulator(imported).calibrate([(torch.randn(1, 3, 16, 16, generator=gen),) for _ in range(4)])
    return imported, stats


def test_homogeneous_plan_and_yaml_round_trip(toy_ctx, x86_profile, tmp_path):
    imported, stats = toy_ctx
    plan = make_plan("w4a8", imported, x86_profile, stats, "minmax", "toy")
    assert set(plan.layers.values()) == {"W4A8"}
    assert all(len(plan.ranges[n]) == 1 for n in imported.graph.layers)
    loaded = Plan.load(plan.save(tmp_path / "plan.yaml"))
    assert dict(loaded.layers) == dict(plan.layers)
    assert dict(loaded.ranges) == dict(plan.ranges)
    assert loaded.encodings() == plan.encodings()


def test_homogeneous_fallback_for_activation_matmul(x86_profile):
    from tvm_mpq.models import load_model

    spec = load_model("tiny_transformer")
    graph = import_model(spec.module, spec.example_inputs).graph
    plan = homogeneous_plan(graph, x86_profile, "w4a8", {})
    for name, layer in graph.layers.items():
        assert plan.layers[name] == ("W8A8" if layer.op_type == "matmul" else "W4A8")


def _write(tmp_path, text):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_unknown_layer_is_named_with_its_line(toy_ctx, x86_profile, tmp_path):
    imported, stats = toy_ctx
    path = _write(tmp_path, "tvm_mpq_plan: 1\nlayers:\n  stem: W8A8\n  blocks.9.conv: W8A8\n")
    with pytest.raises(PlanError, match=r"blocks\.9\.conv \(.*plan\.yaml:4\)"):
        make_plan(path, imported, x86_profile, stats, "minmax")


def test_candidate_the_target_lacks_is_refused(toy_ctx, x86_profile, tmp_path):
    imported, stats = toy_ctx
    path = _write(tmp_path, "tvm_mpq_plan: 1\ndefault: FP32\nlayers:\n  fc: FP16\n")
    with pytest.raises(PlanError, match=r"fc \(.*:4\): FP16 not supported for linear on x86_avx2"):
        make_plan(path, imported, x86_profile, stats, "minmax")


def test_unknown_candidate_and_keys_are_refused_with_line(tmp_path):
    with pytest.raises(PlanError, match=r"plan\.yaml:3: layer 'stem' has candidate 'W3A3'"):
        Plan.load(_write(tmp_path, "tvm_mpq_plan: 1\nlayers:\n  stem: W3A3\n"))
    with pytest.raises(PlanError, match=r"plan\.yaml:2: unknown key 'layerz'"):
        Plan.load(_write(tmp_path, "tvm_mpq_plan: 1\nlayerz: {}\n"))
    with pytest.raises(PlanError, match="tvm_mpq_plan must be 1"):
        Plan.load(_write(tmp_path, "layers: {}\n"))
    with pytest.raises(PlanError, match="not valid YAML"):
        Plan.load(_write(tmp_path, "tvm_mpq_plan: 1\nlayers: [\n"))
    with pytest.raises(PlanError, match=r"ranges of 'stem' must be"):
        Plan.load(_write(tmp_path, "tvm_mpq_plan: 1\nranges:\n  stem: [[2.0, 1.0]]\n"))
    with pytest.raises(PlanError, match="does not exist"):
        Plan.load(tmp_path / "missing.yaml")


def test_split_quantizer_group_is_refused(toy_ctx, x86_profile):
    imported, stats = toy_ctx
    layers = {n: "W8A8" for n in imported.graph.layers}
    layers["branch_b"] = "W4A8"
    with pytest.raises(PlanError, match="group branch_a must share one precision.*branch_b=W4A8"):
        make_plan(Plan(layers), imported, x86_profile, stats, "minmax")


def test_quantized_layer_without_ranges_is_refused(toy_ctx, x86_profile):
    imported, _ = toy_ctx
    with pytest.raises(PlanError, match="without calibrated activation ranges: stem"):
        resolve(Plan({"stem": "W8A8"}, default="FP32"), imported.graph, x86_profile)


def test_default_fills_unlisted_layers(toy_ctx, x86_profile, tmp_path):
    imported, stats = toy_ctx
    path = _write(tmp_path, "tvm_mpq_plan: 1\ndefault: w8a8\nlayers:\n  fc: FP32\n")
    plan = make_plan(path, imported, x86_profile, stats, "minmax")
    assert plan.layers["fc"] == "FP32" and plan.layers["stem"] == "W8A8"
    assert plan.ranges["stem"] and plan.encodings()["stem"][0].bits == 8


def test_unknown_homogeneous_name(toy_ctx, x86_profile):
    imported, stats = toy_ctx
    with pytest.raises(ValueError, match="neither a file nor one of"):
        make_plan("w2a2", imported, x86_profile, stats, "minmax")

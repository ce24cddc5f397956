"""Import and analysis: layer names, workloads, MACs, groups, BatchNorm folding, bad input."""

import pytest
import torch

from tvm_mpq.frontend import import_model


def test_layers_named_after_torch_modules_with_workloads(toy_net):
    model, inputs = toy_net
    imported = import_model(model, inputs)
    layers = imported.graph.layers
    assert list(layers) == ["stem", "dw", "grouped", "branch_a", "branch_b", "fc"]
    stem = layers["stem"]
    assert stem.op_type == "conv2d" and stem.weight == "stem.weight"
    assert stem.workload.strides == (2, 2) and stem.workload.padding == (1, 1, 1, 1)
    assert stem.workload.output_shape == (1, 8, 8, 8)
    assert stem.macs == 8 * 8 * 8 * 3 * 3 * 3
    assert layers["dw"].workload.groups == 8 and layers["dw"].macs == 8 * 8 * 8 * 9
    assert layers["grouped"].workload.groups == 2 and layers["grouped"].macs == 8 * 8 * 8 * 4
    assert layers["fc"].op_type == "linear" and layers["fc"].macs == 8 * 5
    # Workload keys are stable strings, equal for equal signatures.
    assert layers["branch_a"].workload.key() == layers["branch_b"].workload.key()


def test_batch_norm_folded_into_conv_matches_float(toy_net):
    model, inputs = toy_net
    imported = import_model(model, inputs)
    assert imported.folded_batch_norms == ("bn",)
    assert layer_bias(imported, "stem") is not None
    torch.testing.assert_close(imported.module(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def layer_bias(imported, name):
    return imported.graph.layers[name].bias


def test_unsupported_ops_stay_float_and_are_listed(toy_net):
    model, inputs = toy_net
    imported = import_model(model, inputs)
    assert imported.graph.float_ops == {"conv1d": 1}
    assert "seq" not in imported.graph.layers


def test_groups_share_input_and_profile_unified_ops(toy_net):
    model, inputs = toy_net
    groups = {g.name: g.layers for g in import_model(model, inputs).graph.groups}
    # branch_a and branch_b read the same activation: one input quantizer, one group.
    assert groups["branch_a"] == ("branch_a", "branch_b")
    assert groups["stem"] == ("stem",)
    # A profile whose adds need one quantizer on both inputs merges the add's producers
    # (the residual h + grouped(...): stem's output and grouped's output).
    unified = {g.name: g.layers for g in import_model(model, inputs, unified_input_ops=["add"]).graph.groups}
    assert unified["stem"] == ("stem", "grouped")
    with pytest.raises(ValueError, match="unknown unified_input_ops"):
        import_model(model, inputs, unified_input_ops=["softmax"])


def test_activation_matmuls_are_layers_named_by_module():
    from tvm_mpq.models import load_model

    spec = load_model("tiny_transformer")
    graph = import_model(spec.module, spec.example_inputs).graph
    matmuls = [l for l in graph.layers.values() if l.op_type == "matmul"]
    assert len(matmuls) == 2
    for layer in matmuls:
        assert layer.weight is None and layer.num_act_inputs == 2
        assert "." in layer.name or layer.name.startswith("matmul")
    qk = matmuls[0]
    batch, m, k = qk.workload.input_shape[:-2], qk.workload.input_shape[-2], qk.workload.input_shape[-1]
    n = qk.workload.weight_shape[-1]
    assert qk.macs == int(torch.tensor(batch).prod()) * m * k * n
    # q, k and v projections read the same normalised activation → one group.
    linears = [l.name for l in graph.layers.values() if l.op_type == "linear"]
    assert any(len(g.layers) >= 3 and set(g.layers) <= set(linears) for g in graph.groups)


def test_dynamic_shapes_are_refused(toy_net):
    model, inputs = toy_net
    with pytest.raises(ValueError, match="dynamic shapes are not supported"):
        import_model(model, inputs, dynamic_shapes=({0: torch.export.Dim("b")},))


def test_bad_inputs_are_refused(toy_net):
    model, _ = toy_net
    with pytest.raises(ValueError, match="example input 0"):
        import_model(model, ([1, 2, 3],))
    with pytest.raises(ValueError, match="torch.nn.Module"):
        import_model(lambda x: x, (torch.zeros(1),))


def test_batched_export_used_for_simulation(toy_net):
    model, inputs = toy_net
    assert import_model(model, inputs).exported_batched is not None


def test_op_tvm_cannot_import_gives_a_clear_error():
    from tvm_mpq.frontend import to_relax

    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x)

    with pytest.raises(ValueError, match="cannot convert bessel: .*special_bessel_j0"):
        to_relax(import_model(Bessel(), (torch.randn(1, 4),), name="bessel"))

"""PyTorch model → torch.export → (BatchNorm folded) → Relax, with stable layer names.

`import_model` exports the model twice from the same BatchNorm-folded copy:
- a static export (the example input shapes) that becomes the Relax IRModule;
- when the model allows it, an export with a dynamic batch dimension that the fake-quant
  simulator runs on large calibration batches.
Both are analysed; their layer lists must agree, so names in a plan mean the same op in both executors.

In the Relax module each quantizable layer is one binding whose variable is named after the layer
(`bb.emit(..., name_hint=layer.name)`): conv2d(x, W) / matmul(x, W^T) / matmul(a, b), with the bias
added by a separate binding. `QuantizeMixedPrecision` finds layers by that name.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from .graph import LayerGraph, analyze


@dataclass
class ImportedModel:
    name: str
    module: torch.nn.Module  # BatchNorm-folded copy, eval mode
    example_inputs: tuple
    exported: torch.export.ExportedProgram  # static shapes: what gets compiled
    exported_batched: Optional[torch.export.ExportedProgram]  # dynamic batch, for simulation (None: not exportable)
    graph: LayerGraph
    folded_batch_norms: tuple[str, ...]

    def parameter(self, name: str) -> np.ndarray:
        return self.module.get_parameter(name).detach().cpu().numpy().astype(np.float32)


def _check_inputs(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ValueError("example_inputs must be a non-empty tuple of tensors (one per model input)")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"example input {i} is a {type(t).__name__}; only tensors are supported")
    return tuple(example_inputs)


def _export(module, example_inputs, dynamic_shapes=None) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)


def _fold_batch_norms(module: torch.nn.Module, ep: torch.export.ExportedProgram) -> list[str]:
    """Fold every BatchNorm2d that directly follows a Conv2d (its only user) into the conv, in place."""
    aten = torch.ops.aten
    param_of = ep.graph_signature.inputs_to_parameters
    folded = []
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target != aten.batch_norm.default:
            continue
        conv = node.args[0]
        if not (isinstance(conv, torch.fx.Node) and conv.target == aten.conv2d.default and len(conv.users) == 1):
            continue
        w_node, bn_w_node = conv.args[1], node.args[1]
        if not (isinstance(w_node, torch.fx.Node) and w_node.name in param_of):
            continue
        if not (isinstance(bn_w_node, torch.fx.Node) and bn_w_node.name in param_of):
            continue
        conv_path = param_of[w_node.name].rsplit(".", 1)[0]
        bn_path = param_of[bn_w_node.name].rsplit(".", 1)[0]
        conv_mod, bn_mod = module.get_submodule(conv_path), module.get_submodule(bn_path)
        if not isinstance(conv_mod, torch.nn.Conv2d) or not isinstance(bn_mod, torch.nn.BatchNorm2d):
            continue
        if bn_mod.running_mean is None or bn_mod.running_var is None:
            continue
        with torch.no_grad():
            std = torch.sqrt(bn_mod.running_var + bn_mod.eps)
            gamma = bn_mod.weight if bn_mod.weight is not None else torch.ones_like(std)
            beta = bn_mod.bias if bn_mod.bias is not None else torch.zeros_like(std)
            factor = gamma / std
            w = conv_mod.weight * factor.reshape(-1, 1, 1, 1)
            b0 = conv_mod.bias if conv_mod.bias is not None else torch.zeros_like(std)
            b = (b0 - bn_mod.running_mean) * factor + beta
            conv_mod.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=False)
            conv_mod.bias = torch.nn.Parameter(b.detach().clone(), requires_grad=False)
        parent_path, _, attr = bn_path.rpartition(".")
        setattr(module.get_submodule(parent_path) if parent_path else module, attr, torch.nn.Identity())
        folded.append(bn_path)
    return folded


def import_model(
    module: torch.nn.Module,
    example_inputs,
    *,
    name: str = "model",
    unified_input_ops: Iterable[str] = (),
    dynamic_shapes=None,
) -> ImportedModel:
    """Export `module`, fold BatchNorm into convolutions and find the quantizable layers."""
    if dynamic_shapes is not None:
        raise ValueError(
            "dynamic shapes are not supported: tvm_mpq compiles for fixed input shapes. "
            "Pass example inputs with the shapes to compile (batch included) and no dynamic_shapes."
        )
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(module).__name__}")
    example_inputs = _check_inputs(example_inputs)
    module = copy.deepcopy(module).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        first = _export(module, example_inputs)
    except Exception as err:  # torch.export's own message says which construct failed
        raise ValueError(f"torch.export could not export {name}: {err}") from err
    folded = _fold_batch_norms(module, first)
    exported = _export(module, example_inputs) if folded else first
    graph = analyze(exported, unified_input_ops)

    batched = None
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = tuple({0: batch} if t.dim() > 0 else None for t in example_inputs)
    # Export with batch 2: a size-1 example would be specialised to a constant.
    doubled = tuple(torch.cat([t, t]) if t.dim() > 0 else t for t in example_inputs)
    try:
        candidate = _export(module, doubled, dynamic_shapes=dyn)
        other = analyze(candidate, unified_input_ops)
        if [(l.name, l.op_type) for l in other.layers.values()] == [
            (l.name, l.op_type) for l in graph.layers.values()
        ]:
            batched = candidate
    except Exception:  # not batch-polymorphic: the simulator runs sample by sample
        batched = None
    return ImportedModel(name, module, example_inputs, exported, batched, graph, tuple(folded))


# ----------------------------------------------------------------------------- Relax


def _layer_converters(graph: LayerGraph):
    """Custom converters for `from_exported_program`: emit each layer as one named binding."""
    from tvm import relax

    by_node = graph.by_node()

    def conv2d(node, importer):
        layer = by_node.get(node.name)
        if layer is None:
            return importer._conv2d(node)
        args = importer.retrieve_args(node)
        wl = layer.workload
        top, left, bottom, right = wl.padding
        y = importer.block_builder.emit(
            relax.op.nn.conv2d(args[0], args[1], strides=wl.strides, padding=(top, left, bottom, right),
                               dilation=wl.dilation, groups=wl.groups, out_dtype="float32"),
            name_hint=layer.name,
        )
        return _add_bias(importer, y, args[2] if len(args) > 2 else None, (1, -1, 1, 1))

    def linear(node, importer):
        layer = by_node.get(node.name)
        if layer is None:
            return importer._linear(node)
        args = importer.retrieve_args(node)
        w_t = importer.block_builder.emit(relax.op.permute_dims(args[1]))
        y = importer.block_builder.emit(relax.op.matmul(args[0], w_t, out_dtype="float32"), name_hint=layer.name)
        return _add_bias(importer, y, args[2] if len(args) > 2 else None, None)

    def matmul(node, importer):
        layer = by_node.get(node.name)
        args = importer.retrieve_args(node)
        return importer.block_builder.emit(
            relax.op.matmul(args[0], args[1], out_dtype="float32"),
            name_hint=layer.name if layer is not None else "",
        )

    def to_device(node, importer):  # aten.to.device(x, device, dtype, ...): a cast on one device
        x = importer.env[node.args[0]]
        dtype = node.args[2] if len(node.args) > 2 else node.kwargs.get("dtype")
        if isinstance(dtype, torch.dtype):
            return importer.block_builder.emit(relax.op.astype(x, importer._convert_data_type(dtype, importer.env)))
        return x

    def where_scalar(node, importer):  # aten.where.ScalarOther / ScalarSelf: one branch is a Python scalar
        cond, a, b = node.args[0], node.args[1], node.args[2]
        ref = a if isinstance(a, torch.fx.Node) else b
        dtype = importer._convert_data_type(ref.meta["val"].dtype, importer.env)
        ops = [importer.env[v] if isinstance(v, torch.fx.Node) else relax.const(v, dtype) for v in (a, b)]
        condition = importer.env[cond]
        if str(condition.ty.dtype) != "bool":  # the importer types some boolean ops (e.g. __and__) as int
            condition = importer.block_builder.emit(relax.op.astype(condition, "bool"))
        return importer.block_builder.emit(relax.op.where(condition, ops[0], ops[1]))

    return {
        "conv2d.default": conv2d, "linear.default": linear, "matmul.default": matmul, "bmm.default": matmul,
        "to.device": to_device, "where.ScalarOther": where_scalar, "where.ScalarSelf": where_scalar,
    }


def _add_bias(importer, y, bias, shape):
    from tvm import relax

    if bias is None:
        return y
    if shape is not None:
        bias = relax.op.reshape(bias, shape)
    return importer.block_builder.emit(relax.op.add(y, bias))


def to_relax(imported: ImportedModel):
    """The float Relax IRModule of the model, weights bound as constants, layers named."""
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = from_exported_program(
                imported.exported,
                keep_params_as_input=False,
                unwrap_unit_return_tuple=True,
                run_ep_decomposition=False,
                custom_convert_map=_layer_converters(imported.graph),
            )
        except AssertionError as err:  # the importer asserts on ops it has no converter for
            raise ValueError(
                f"TVM's PyTorch importer cannot convert {imported.name}: {err}. "
                "Rewrite those ops in the model (or report them) to compile it."
            ) from err
    return mod

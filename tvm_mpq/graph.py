"""Quantizable layers, their workloads and quantizer groups, read off a torch.export graph.

A *layer* is one op whose inputs get quantized: conv2d (incl. depthwise / grouped), linear, and
matmul between two activations (an activation-only layer). Its name maps back to the torch module:
the weight parameter's module path (``blocks.3.conv_pw``), or ``<module path>.<fx node name>`` for an
activation matmul (``encoder.layer.0.attention.self.matmul_1``).

A *quantizer group* is a set of layers that must share one precision: layers that consume the same
activation (looking through data-movement ops share the input quantizer), and, when the hardware
profile asks for it, layers whose outputs meet at an add / concat / mul.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import torch
import torch.fx

aten = torch.ops.aten

# Ops that only move or select data: a quantizer on their output is the quantizer on their input.
DATA_MOVEMENT_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.flatten.using_ints, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.contiguous.default,
    aten.clone.default, aten.pad.default, aten.constant_pad_nd.default, aten.dropout.default,
    aten.expand.default, aten.slice.Tensor, aten.select.int, aten.max_pool2d.default,
    aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default, aten.alias.default,
}
# Activation functions that integer hardware fuses into the producing layer: the layer's output
# quantizer sits after them.
FUSED_ACTIVATION_OPS = {
    aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.clamp.default, aten.relu6.default,
}
# Ops whose inputs some hardware makes share one quantizer (profile: constraints.unified_input_ops).
UNIFIABLE_OPS = {
    "add": {aten.add.Tensor, aten.add_.Tensor},
    "sub": {aten.sub.Tensor, aten.sub_.Tensor},
    "mul": {aten.mul.Tensor, aten.mul_.Tensor},
    "concat": {aten.cat.default, aten.concat.default},
}
# Layer ops this project lowers; anything else with compute stays float.
CONV_OPS = {aten.conv2d.default}
LINEAR_OPS = {aten.linear.default}
MATMUL_OPS = {aten.matmul.default, aten.bmm.default}
# Compute ops that might be expected to quantize but are not lowered: reported as left in float.
REPORTED_FLOAT_OPS = {
    aten.conv1d.default: "conv1d", aten.conv3d.default: "conv3d", aten.conv2d.padding: "conv2d(padding=str)",
    aten.conv_transpose2d.input: "conv_transpose2d", aten.addmm.default: "addmm", aten.mm.default: "mm",
    aten.baddbmm.default: "baddbmm", aten.einsum.default: "einsum",
}


@dataclass(frozen=True)
class Workload:
    """A layer's compute signature: the key of a latency measurement, independent of the model."""

    op: str  # conv2d | linear | matmul
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]  # the second operand's shape for an activation matmul
    output_shape: tuple[int, ...]
    strides: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()  # conv: (top, left, bottom, right)
    dilation: tuple[int, ...] = ()
    groups: int = 1
    has_bias: bool = False

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one execution: output elements × reduction length."""
        out = 1
        for d in self.output_shape:
            out *= d
        if self.op == "conv2d":
            return out * self.weight_shape[1] * self.weight_shape[2] * self.weight_shape[3]
        return out * self.input_shape[-1]  # linear and matmul: reduce over the last input axis


@dataclass(frozen=True)
class Layer:
    name: str
    op_type: str  # conv2d | linear | matmul  (the op types a hardware profile lists candidates for)
    node: str  # fx node name in the exported graph
    workload: Workload
    macs: int
    weight: Optional[str] = None  # parameter name in the state dict
    bias: Optional[str] = None
    input_sources: tuple[str, ...] = ()  # fx nodes producing the quantized inputs, data movement looked through

    @property
    def num_act_inputs(self) -> int:
        return 2 if self.op_type == "matmul" else 1


@dataclass(frozen=True)
class QuantizerGroup:
    name: str  # the first member layer's name
    layers: tuple[str, ...]
    reasons: tuple[str, ...] = ()


@dataclass
class LayerGraph:
    layers: dict[str, Layer]  # in graph order
    groups: list[QuantizerGroup]
    float_ops: dict[str, int] = field(default_factory=dict)  # compute ops left in float (not lowered)

    def by_node(self) -> dict[str, Layer]:
        return {layer.node: layer for layer in self.layers.values()}

    def group_of(self) -> dict[str, str]:
        return {name: g.name for g in self.groups for name in g.layers}

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers.values())


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if val is None or not hasattr(val, "shape"):
        raise ValueError(f"node {node.name} has no shape metadata")
    return tuple(int(d) for d in val.shape)


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def _arg(node: torch.fx.Node, index: int, default):
    return node.args[index] if len(node.args) > index else default


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1])) if v else (1, 1)


def source_of(node, skip: set = DATA_MOVEMENT_OPS):
    """Walk back through data-movement ops to the node that produced the values."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in skip:
        node = node.args[0]
    return node


def analyze(ep: torch.export.ExportedProgram, unified_input_ops: Iterable[str] = ()) -> LayerGraph:
    """Find the quantizable layers and quantizer groups of an exported program."""
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    layers: dict[str, Layer] = {}
    float_ops: dict[str, int] = {}

    def param_name(arg) -> Optional[str]:
        if isinstance(arg, torch.fx.Node) and arg.op == "placeholder":
            return param_of.get(arg.name)
        return None

    def add(layer: Layer):
        name = layer.name
        i = 1
        while name in layers:  # a weight shared by two ops: disambiguate with the node name
            name = f"{layer.name}.{layer.node}" if i == 1 else f"{layer.name}.{layer.node}_{i}"
            i += 1
        layers[name] = Layer(**{**layer.__dict__, "name": name})

    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in CONV_OPS:
            weight = param_name(node.args[1])
            if weight is None:
                _count(float_ops, "conv2d(non-constant weight)")
                continue
            bias = param_name(_arg(node, 2, None))
            x_shape, w_shape, y_shape = _shape(node.args[0]), _shape(node.args[1]), _shape(node)
            pad = _pair(_arg(node, 4, [0, 0]))
            wl = Workload(
                "conv2d", x_shape, w_shape, y_shape,
                strides=_pair(_arg(node, 3, [1, 1])), padding=(pad[0], pad[1], pad[0], pad[1]),
                dilation=_pair(_arg(node, 5, [1, 1])), groups=int(_arg(node, 6, 1)), has_bias=bias is not None,
            )
            add(Layer(weight.rsplit(".", 1)[0], "conv2d", node.name, wl, wl.macs, weight, bias,
                      (source_of(node.args[0]).name,)))
        elif node.target in LINEAR_OPS:
            weight = param_name(node.args[1])
            if weight is None:
                _count(float_ops, "linear(non-constant weight)")
                continue
            bias = param_name(_arg(node, 2, None))
            x_shape, w_shape, y_shape = _shape(node.args[0]), _shape(node.args[1]), _shape(node)
            wl = Workload("linear", x_shape, w_shape, y_shape, has_bias=bias is not None)
            add(Layer(weight.rsplit(".", 1)[0], "linear", node.name, wl, wl.macs,
                      weight, bias, (source_of(node.args[0]).name,)))
        elif node.target in MATMUL_OPS:
            a, b = node.args[0], node.args[1]
            if param_name(source_of(a)) or param_name(source_of(b)):
                _count(float_ops, "matmul(with parameter operand)")
                continue
            a_shape, b_shape, y_shape = _shape(a), _shape(b), _shape(node)
            if len(a_shape) < 2 or len(b_shape) < 2 or a_shape[:-2] != b_shape[:-2]:
                _count(float_ops, "matmul(broadcast)")
                continue
            wl = Workload("matmul", a_shape, b_shape, y_shape)
            path = _module_path(node)
            name = f"{path}.{node.name}" if path else node.name
            add(Layer(name, "matmul", node.name, wl, wl.macs,
                      input_sources=(source_of(a).name, source_of(b).name)))
        elif node.target in REPORTED_FLOAT_OPS:
            _count(float_ops, REPORTED_FLOAT_OPS[node.target])

    groups = _quantizer_groups(ep, layers, set(unified_input_ops))
    return LayerGraph(layers, groups, float_ops)


def _count(counts: dict, key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _quantizer_groups(ep, layers: dict[str, Layer], unified_input_ops: set[str]) -> list[QuantizerGroup]:
    unknown = unified_input_ops - set(UNIFIABLE_OPS)
    if unknown:
        raise ValueError(f"unknown unified_input_ops {sorted(unknown)}; allowed: {sorted(UNIFIABLE_OPS)}")
    parent = {name: name for name in layers}
    reasons: dict[str, list[str]] = {name: [] for name in layers}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b, why):
        ra, rb = find(a), find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=order.index)
            parent[second] = first
            reasons[first].extend(reasons.pop(second, []))
            reasons[first].append(why)

    order = list(layers)
    # 1. Layers reading the same activation share its quantizer.
    by_source: dict[str, list[str]] = {}
    for layer in layers.values():
        for src in layer.input_sources:
            by_source.setdefault(src, []).append(layer.name)
    for src, names in by_source.items():
        for other in names[1:]:
            union(names[0], other, f"share input {src}")
    # 2. Layers whose outputs meet at an op the hardware computes on one shared quantizer.
    if unified_input_ops:
        layer_of_node = {layer.node: layer.name for layer in layers.values()}
        targets = set().union(*(UNIFIABLE_OPS[o] for o in unified_input_ops))
        for node in ep.graph.nodes:
            if node.op == "call_function" and node.target in targets:
                args = node.args[0] if node.target in UNIFIABLE_OPS["concat"] else node.args
                producers = []
                for a in args:
                    src = source_of(a, DATA_MOVEMENT_OPS | FUSED_ACTIVATION_OPS) if isinstance(a, torch.fx.Node) else None
                    if src is not None and src.name in layer_of_node:
                        producers.append(layer_of_node[src.name])
                for other in producers[1:]:
                    union(producers[0], other, f"outputs meet at {node.name}")
    members: dict[str, list[str]] = {}
    for name in order:
        members.setdefault(find(name), []).append(name)
    return [QuantizerGroup(root, tuple(names), tuple(reasons.get(root, ()))) for root, names in members.items()]

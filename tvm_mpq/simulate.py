"""PyTorch fake-quant executor: runs a model at any per-layer precision assignment.

The exported graph (dynamic batch when the model allows it) is rewritten once: every quantizable
layer becomes a `SimLayer` submodule whose precision and activation encodings can be switched between
runs without re-tracing. Fake quantization follows `numerics` exactly: activations are rounded and
clamped per tensor, weights are the same per-channel quantized tensors the lowering stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import numerics
from .frontend import ImportedModel
from .graph import Layer
from .numerics import ActEncoding, Candidate


class _Observer:
    """Running min/max and a bounded random sample of one activation input."""

    def __init__(self, sample_per_batch: int, seed: int):
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []
        self.sample_per_batch = sample_per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.nonfinite = False

    def __call__(self, x: torch.Tensor):
        x = x.detach().float()
        if not torch.isfinite(x).all():
            self.nonfinite = True
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        if self.sample_per_batch:
            flat = x.reshape(-1)
            if flat.numel() > self.sample_per_batch:
                flat = flat[torch.randint(flat.numel(), (self.sample_per_batch,), generator=self.gen)]
            self.samples.append(flat.numpy().copy())


class SimLayer(torch.nn.Module):
    """One layer of the simulation graph, switchable between float and any candidate.

    Quantized layers are simulated in the integer domain, in the same order of operations as the
    compiled kernel: acc = Σ (x_q - z_x) · w_q (integer-valued, exact), then float32(acc) × (s_x · s_w)
    + bias. The accumulation runs in float32 when a bound proves every partial sum stays below 2^24
    (so any summation order is exact), in float64 otherwise.
    """

    def __init__(self, layer: Layer, weight: Optional[np.ndarray], bias: Optional[np.ndarray]):
        super().__init__()
        self.layer = layer
        self.weight = None if weight is None else torch.from_numpy(weight)
        self.bias = None if bias is None else torch.from_numpy(bias)
        self.candidate: Optional[Candidate] = None
        self.encodings: tuple[ActEncoding, ...] = ()
        self.observers: Optional[list[_Observer]] = None
        self._qweights: dict[int, tuple[torch.Tensor, np.ndarray, float]] = {}

    def integer_weight(self, bits: int) -> tuple[torch.Tensor, np.ndarray, float]:
        """(integer-valued float32 weight, per-channel scale, max over channels of Σ|w_q|)."""
        if bits not in self._qweights:
            q, scale = numerics.quantize_weight(self.weight.numpy(), bits)
            l1 = float(np.abs(q.reshape(q.shape[0], -1).astype(np.int64)).sum(axis=1).max())
            self._qweights[bits] = (torch.from_numpy(q.astype(np.float32)), scale, l1)
        return self._qweights[bits]

    def _compute(self, inputs: Sequence[torch.Tensor], weight, bias):
        wl = self.layer.workload
        if self.layer.op_type == "conv2d":
            top, left, _, _ = wl.padding
            return F.conv2d(inputs[0], weight, bias, wl.strides, (top, left), wl.dilation, wl.groups)
        if self.layer.op_type == "linear":
            return F.linear(inputs[0], weight, bias)
        return torch.matmul(inputs[0], inputs[1])

    def forward(self, *inputs):
        if self.observers is not None:
            for obs, x in zip(self.observers, inputs):
                obs(x)
        c = self.candidate
        if c is None or (not c.is_quantized and c.float_dtype == "float32"):
            return self._compute(inputs, self.weight, self.bias)
        if not c.is_quantized:  # reduced-precision float: round operands, compute in float32
            dt = getattr(torch, c.float_dtype)
            inputs = [x.to(dt).float() for x in inputs]
            weight = None if self.weight is None else self.weight.to(dt).float()
            return self._compute(inputs, weight, self.bias)
        return self._integer_forward(inputs, c)

    def _integer_forward(self, inputs, c: Candidate):
        ints = []
        for x, enc in zip(inputs, self.encodings):
            q = torch.clamp(torch.round(x / enc.scale) + enc.zero_point, enc.qmin, enc.qmax)
            ints.append(q - enc.zero_point)
        span = [float(enc.qmax - enc.qmin) for enc in self.encodings]
        if self.layer.op_type == "matmul":
            bound = span[0] * span[1] * self.layer.workload.input_shape[-1]
            weight, mult = None, np.float32(np.float32(self.encodings[0].scale) * np.float32(self.encodings[1].scale))
            mult = torch.tensor(mult)
        else:
            weight, w_scale, l1 = self.integer_weight(c.weight_bits)
            bound = span[0] * l1
            mult = torch.from_numpy((np.float32(self.encodings[0].scale) * w_scale).astype(np.float32))
            mult = mult.reshape(1, -1, 1, 1) if self.layer.op_type == "conv2d" else mult
        if bound >= 2**24:
            ints = [t.double() for t in ints]
            weight = None if weight is None else weight.double()
        acc = self._compute(ints, weight, None).float()
        y = acc * mult
        if self.bias is not None:
            y = y + (self.bias.reshape(1, -1, 1, 1) if self.layer.op_type == "conv2d" else self.bias)
        return y


@dataclass(frozen=True)
class InputStats:
    """What calibration saw at one activation input of a layer."""

    lo: float
    hi: float
    sample: np.ndarray

    def range(self, method: str, bits: int) -> tuple[float, float]:
        if method == "minmax":
            return self.lo, self.hi
        if method == "percentile":
            return numerics.range_percentile(self.sample, self.lo, self.hi)
        if method == "mse":
            return numerics.range_mse(self.sample, self.lo, self.hi, bits)
        raise ValueError(f"unknown range method {method!r}; allowed: {', '.join(numerics.RANGE_METHODS)}")


class Simulator:
    """Fake-quant executor of one imported model."""

    def __init__(self, imported: ImportedModel, chunk: int = 32):
        self.imported = imported
        self.batched = imported.exported_batched is not None
        self.chunk = chunk if self.batched else 1
        ep = imported.exported_batched if self.batched else imported.exported
        gm = ep.module()
        nodes = {n.name: n for n in gm.graph.nodes}
        self.layers: dict[str, SimLayer] = {}
        for i, layer in enumerate(imported.graph.layers.values()):
            node = nodes.get(layer.node)
            if node is None:
                raise RuntimeError(f"layer {layer.name}: node {layer.node} not found in the simulation graph")
            sim = SimLayer(
                layer,
                imported.parameter(layer.weight) if layer.weight else None,
                imported.parameter(layer.bias) if layer.bias else None,
            )
            target = f"tvm_mpq_sim_{i}"
            gm.add_submodule(target, sim)
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(target, args=tuple(node.args[: layer.num_act_inputs]))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            self.layers[layer.name] = sim
        gm.graph.eliminate_dead_code()
        gm.recompile()
        self.gm = gm

    # -------------------------------------------------------------- configuration

    def configure(self, candidates: Mapping[str, Candidate], encodings: Mapping[str, Sequence[ActEncoding]]):
        """Set each layer's candidate (missing layers: float) and its activation encodings."""
        for name, sim in self.layers.items():
            c = candidates.get(name)
            sim.candidate = c
            sim.encodings = tuple(encodings.get(name, ())) if c is not None and c.is_quantized else ()
            if c is not None and c.is_quantized and len(sim.encodings) != sim.layer.num_act_inputs:
                raise ValueError(f"layer {name}: {c.name} needs {sim.layer.num_act_inputs} activation encoding(s)")

    def configure_plan(self, plan) -> None:
        self.configure(plan.candidates(), plan.encodings())

    def reset(self):
        self.configure({}, {})

    # -------------------------------------------------------------- execution

    def _batches(self, samples: Sequence[tuple]) -> Iterable[tuple]:
        for start in range(0, len(samples), self.chunk):
            group = samples[start : start + self.chunk]
            yield tuple(torch.cat([s[i] for s in group]) for i in range(len(group[0])))

    @torch.no_grad()
    def run(self, samples: Sequence[tuple]) -> np.ndarray:
        """Run batch-1 input tuples (batched internally); returns outputs stacked on axis 0."""
        if len(samples) == 0:
            raise ValueError("no input samples given")
        outs = []
        for batch in self._batches(samples):
            y = self.gm(*batch)
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.float().numpy())
        return np.concatenate(outs)

    @torch.no_grad()
    def calibrate(self, samples: Sequence[tuple], sample_per_batch: int = 4096, seed: int = 0) -> dict:
        """Observe every layer's activation inputs on the float model: {layer: (InputStats, ...)}."""
        if len(samples) == 0:
            raise ValueError("calibration set is empty: give at least one input sample")
        saved = {n: (s.candidate, s.encodings) for n, s in self.layers.items()}
        self.reset()
        for i, sim in enumerate(self.layers.values()):
            sim.observers = [_Observer(sample_per_batch, seed + 7919 * i + j) for j in range(sim.layer.num_act_inputs)]
        try:
            self.run(samples)
        finally:
            stats = {}
            for name, sim in self.layers.items():
                obs, sim.observers = sim.observers, None
                stats[name] = tuple(
                    InputStats(o.lo, o.hi, np.concatenate(o.samples) if o.samples else np.zeros(0, np.float32))
                    for o in obs
                )
                if any(o.nonfinite for o in obs):
                    raise ValueError(f"calibration: NaN or Inf reaches the input of layer {name}")
            for n, (c, e) in saved.items():
                self.layers[n].candidate, self.layers[n].encodings = c, e
        return stats

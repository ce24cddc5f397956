"""PyTorch fake-quant executor: runs a model at any per-layer precision assignment.

The exported graph (dynamic batch when the model allows it) is rewritten once: every quantizable
layer becomes a `SimLayer` submodule whose precision and activation encodings can be switched between
runs without re-tracing. Fake quantization follows `numerics` exactly: activations are rounded and
clamped per tensor, weights are the same per-channel quantized tensors the lowering stores.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import numerics, smoothing
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


class _ChannelObserver:
    """Per-channel min/max of a layer's first input and a bounded random sample of its rows ([N, C]: the
    tokens of a linear layer, the pixels of a 1x1 conv), for choosing smoothing factors."""

    def __init__(self, layer: Layer, rows_per_batch: int, seed: int):
        self.axis = 1 if layer.op_type == "conv2d" else -1
        self.lo: Optional[torch.Tensor] = None
        self.hi: Optional[torch.Tensor] = None
        self.rows: list[np.ndarray] = []
        self.kept = 0
        self.rows_per_batch = rows_per_batch
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor):
        x = x.detach().float()
        rows = (x.movedim(1, -1) if self.axis == 1 else x).reshape(-1, x.shape[self.axis])
        lo, hi = rows.amin(0), rows.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        take = min(self.rows_per_batch, smoothing.MAX_ROWS - self.kept, rows.shape[0])
        if take > 0:
            pick = torch.randperm(rows.shape[0], generator=self.gen)[:take]
            self.rows.append(rows[pick].numpy().copy())
            self.kept += take


class _PatchMean:
    """Running mean of the input patch a weighted layer sees ([C, KH, KW] for a conv, [K] for a linear),
    zero padding included: what `numerics.bias_correction` needs."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.total: Optional[torch.Tensor] = None
        self.count = 0

    def __call__(self, x: torch.Tensor):
        x = x.detach().double()
        wl = self.layer.workload
        if self.layer.op_type == "conv2d":
            kh, kw = wl.weight_shape[2], wl.weight_shape[3]
            (sh, sw), (dh, dw) = wl.strides, wl.dilation
            top, left = wl.padding[0], wl.padding[1]  # the padding the simulation's conv applies (both sides)
            plane = F.pad(x.sum(0), (left, left, top, top))  # [C, Hp, Wp]: patches summed over the batch
            oh = (plane.shape[1] - dh * (kh - 1) - 1) // sh + 1
            ow = (plane.shape[2] - dw * (kw - 1) - 1) // sw + 1
            taps = [plane[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw].sum((1, 2))
                    for i in range(kh) for j in range(kw)]
            total, count = torch.stack(taps, 1).reshape(-1, kh, kw), x.shape[0] * oh * ow
        else:
            total, count = x.reshape(-1, x.shape[-1]).sum(0), x.numel() // x.shape[-1]
        self.total = total if self.total is None else self.total + total
        self.count += count

    def mean(self) -> Optional[np.ndarray]:
        return None if self.total is None else (self.total / self.count).numpy()

    def corrections(self, weight: np.ndarray) -> dict[int, np.ndarray]:
        """{weight bits: float32 [O]} for 8- and 4-bit weights."""
        m = self.mean()
        if m is None:
            return {}
        return {bits: numerics.bias_correction(weight, bits, m, self.layer.workload.groups if self.layer.op_type == "conv2d"
                                               else 1) for bits in (8, 4)}

    def smoothed_correction(self, weight: np.ndarray, s: np.ndarray) -> Optional[np.ndarray]:
        """The 8-bit correction of the smoothed layer: weights W · s see the mean patch divided by s."""
        m = self.mean()
        if m is None:
            return None
        m = m / np.asarray(s, np.float64).reshape((-1,) + (1,) * (m.ndim - 1))
        return numerics.bias_correction(smoothing.scale_weight(weight, s), 8, m)


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
        self.patch_mean: Optional[_PatchMean] = None  # set while calibrating a weighted layer
        self.correction: Optional[torch.Tensor] = None  # bias correction of the current configuration
        self.channel_observer: Optional[_ChannelObserver] = None  # set while calibrating an eligible layer
        self._qweights: dict[tuple, tuple[torch.Tensor, np.ndarray, float]] = {}
        self._multipliers: tuple = ((), ())  # (the encodings they are of, their quantize multipliers)

    def integer_weight(self, bits: int, factors: Optional[tuple] = None) -> tuple[torch.Tensor, np.ndarray, float]:
        """(integer-valued float32 weight, per-channel scale, max over channels of Σ|w_q|), of the weight
        scaled by smoothing `factors` when given."""
        key = (bits, factors)
        if key not in self._qweights:
            w = self.weight.numpy() if factors is None else smoothing.scale_weight(self.weight.numpy(), factors)
            q, scale = numerics.quantize_weight(w, bits)
            l1 = float(np.abs(q.reshape(q.shape[0], -1).astype(np.int64)).sum(axis=1).max())
            self._qweights[key] = (torch.from_numpy(q.astype(np.float32)), scale, l1)
        return self._qweights[key]

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
            if self.patch_mean is not None:
                self.patch_mean(inputs[0])
            if self.channel_observer is not None:
                self.channel_observer(inputs[0])
        c = self.candidate
        if c is None or (not c.is_quantized and c.float_dtype == "float32"):
            return self._compute(inputs, self.weight, self.bias)
        if not c.is_quantized:  # reduced-precision float: round operands, compute in float32
            dt = getattr(torch, c.float_dtype)
            inputs = [x.to(dt).float() for x in inputs]
            weight = None if self.weight is None else self.weight.to(dt).float()
            return self._compute(inputs, weight, self.bias)
        return self._integer_forward(inputs, c)

    def _quantize_multipliers(self) -> tuple:
        """Per activation input what quantizing multiplies by: the scalar inv_scale, or with smoothing the
        float32 vector inv_scale / s along the channel axis (made once per configuration, not per batch)."""
        if self._multipliers[0] is not self.encodings:
            shape = (1, -1, 1, 1) if self.layer.op_type == "conv2d" else (-1,)
            self._multipliers = (self.encodings, tuple(
                enc.inv_scale if enc.channel_scale is None else torch.from_numpy(enc.multiplier()).reshape(shape)
                for enc in self.encodings))
        return self._multipliers[1]

    def _integer_forward(self, inputs, c: Candidate):
        ints = []
        for x, enc, mult in zip(inputs, self.encodings, self._quantize_multipliers()):
            q = torch.clamp(torch.round(x * mult) + enc.zero_point, enc.qmin, enc.qmax)
            ints.append(q - enc.zero_point)
        span = [float(enc.qmax - enc.qmin) for enc in self.encodings]
        if self.layer.op_type == "matmul":
            bound = span[0] * span[1] * self.layer.workload.input_shape[-1]
            weight = None
            divisor = torch.tensor(numerics.requant_divisor(self.encodings[0].scale, self.encodings[1].scale))
        else:
            weight, w_scale, l1 = self.integer_weight(c.weight_bits, self.encodings[0].channel_scale)
            bound = span[0] * l1
            divisor = torch.from_numpy(numerics.requant_divisor(self.encodings[0].scale, w_scale))
            divisor = divisor.reshape(1, -1, 1, 1) if self.layer.op_type == "conv2d" else divisor
        if bound >= 2**24:
            ints = [t.double() for t in ints]
            weight = None if weight is None else weight.double()
        acc = self._compute(ints, weight, None).float()
        y = acc / divisor
        if self.correction is not None:  # before the bias, as the lowering orders it (float adds do not commute)
            y = y - (self.correction.reshape(1, -1, 1, 1) if self.layer.op_type == "conv2d" else self.correction)
        if self.bias is not None:
            y = y + (self.bias.reshape(1, -1, 1, 1) if self.layer.op_type == "conv2d" else self.bias)
        return y


@dataclass(frozen=True)
class InputStats:
    """What calibration saw at one activation input of a layer."""

    lo: float
    hi: float
    sample: np.ndarray
    # {weight bits: float32 [O]}: the layer's bias correction (`numerics.bias_correction`), on its first
    # input's stats; empty for activation x activation matmuls
    bias_correction: Mapping[int, np.ndarray] = field(default_factory=dict)
    # the stats of this input divided by the layer's smoothing factors (`tvm_mpq.smoothing`), what its
    # W8A8 candidate quantizes; None when the layer is not eligible or no smoothing is best
    smoothed: Optional["InputStats"] = None
    factors: Optional[tuple[float, ...]] = None  # set on smoothed stats: the factors s they are divided by

    def for_candidate(self, candidate: str) -> "InputStats":
        """The stats of the tensor `candidate` quantizes: the smoothed input for W8A8 where smoothing applies."""
        return self.smoothed if self.smoothed is not None and candidate == smoothing.CANDIDATE else self

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

    def __init__(self, imported: ImportedModel, chunk: int = 32, channels_last: bool = False):
        """`channels_last`: run 4-D inputs (and so the convolutions) in channels-last layout, faster on CPU;
        integer layers stay exact, float ops round within float32 noise of the default layout."""
        self.imported = imported
        self.batched = imported.exported_batched is not None
        self.chunk = chunk if self.batched else 1
        self.channels_last = channels_last
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
        self._index_nodes()
        self.bias_correction = True  # apply the bias corrections `calibrate` measures (see `configure`)
        self.smoothing = True  # let `calibrate` choose smoothing factors for W8A8 (`tvm_mpq.smoothing`)
        self._corrections: dict[str, dict[int, np.ndarray]] = {}
        self._smoothed_corrections: dict[str, np.ndarray] = {}  # layer → 8-bit correction of its smoothed weights

    def _index_nodes(self) -> None:
        """Execution order, each layer's position in it and each value's last use (for `PrefixCache`)."""
        self._nodes = list(self.gm.graph.nodes)
        self._index = index = {n: i for i, n in enumerate(self._nodes)}
        self._placeholders = [n for n in self._nodes if n.op == "placeholder"]
        self._last_use = [max((index[u] for u in n.users), default=i) for i, n in enumerate(self._nodes)]
        modules = dict(self.gm.named_modules())
        self._modules = {n: modules[n.target] for n in self._nodes if n.op == "call_module"}
        by_module = {id(m): index[n] for n, m in self._modules.items()}
        self.positions = {name: by_module[id(sim)] for name, sim in self.layers.items()}
        # the node each layer's first input comes from (layers reading one tensor share smoothing factors)
        self._input_of = {name: self._nodes[self.positions[name]].args[0] for name in self.layers}
        # Resuming from stored activations is exact only when no operation writes into its inputs.
        self.resumable = not any(
            n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False)
            for n in self._nodes
        )

    # -------------------------------------------------------------- configuration

    def configure(self, candidates: Mapping[str, Candidate], encodings: Mapping[str, Sequence[ActEncoding]],
                  corrections: Optional[Mapping[str, np.ndarray]] = None):
        """Set each layer's candidate (missing layers: float) and its activation encodings.

        `corrections` (layer → float32 [O]) are the bias corrections of the quantized layers; None: those
        `calibrate` measured, for each layer's weight bits, when `bias_correction` is on (else none)."""
        for name, sim in self.layers.items():
            c = candidates.get(name)
            sim.candidate = c
            sim.encodings = tuple(encodings.get(name, ())) if c is not None and c.is_quantized else ()
            if c is not None and c.is_quantized and len(sim.encodings) != sim.layer.num_act_inputs:
                raise ValueError(f"layer {name}: {c.name} needs {sim.layer.num_act_inputs} activation encoding(s)")
            corr = None
            if c is not None and c.is_quantized and sim.weight is not None:
                if corrections is not None:
                    corr = corrections.get(name)
                elif self.bias_correction and sim.encodings[0].channel_scale is not None:
                    corr = self._smoothed_corrections.get(name)
                elif self.bias_correction:
                    corr = self._corrections.get(name, {}).get(c.weight_bits)
            sim.correction = None if corr is None else torch.from_numpy(np.asarray(corr, np.float32))

    def configure_plan(self, plan) -> None:
        self.configure(plan.candidates(), plan.encodings(), plan.corrections())

    def reset(self):
        self.configure({}, {})

    # -------------------------------------------------------------- execution

    def _batches(self, samples: Sequence[tuple]) -> Iterable[tuple]:
        for start in range(0, len(samples), self.chunk):
            group = samples[start : start + self.chunk]
            batch = tuple(torch.cat([s[i] for s in group]) for i in range(len(group[0])))
            if self.channels_last:
                batch = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 and x.is_floating_point()
                              else x for x in batch)
            yield batch

    def _execute(self, env: dict, start: int, stop: int):
        """Run nodes [start, stop) in `env` (node → value), dropping each value after its last use.
        Returns the model output when the output node is reached, else None."""
        nodes, last, index = self._nodes, self._last_use, self._index
        load = lambda n: env[n]  # noqa: E731
        for i in range(start, stop):
            node = nodes[i]
            if node.op == "placeholder":  # bound by the caller
                continue
            if node.op == "output":
                y = torch.fx.node.map_arg(node.args[0], load)
                return y[0] if isinstance(y, (tuple, list)) else y
            args = torch.fx.node.map_arg(node.args, load)
            kwargs = torch.fx.node.map_arg(node.kwargs, load)
            if node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            elif node.op == "call_module":
                env[node] = self._modules[node](*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "get_attr":
                value = self.gm
                for part in node.target.split("."):
                    value = getattr(value, part)
                env[node] = value
            else:
                raise RuntimeError(f"unexpected {node.op} node {node.name}")
            for a in node.all_input_nodes:
                if last[index[a]] == i:
                    env.pop(a, None)
        return None

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
        """Observe every layer's activation inputs on the float model: {layer: (InputStats, ...)}. With
        `smoothing` on, eligible layers also get their smoothing factors (`InputStats.smoothed`)."""
        if len(samples) == 0:
            raise ValueError("calibration set is empty: give at least one input sample")
        saved = {n: (s.candidate, s.encodings, s.correction) for n, s in self.layers.items()}
        self.reset()
        for i, sim in enumerate(self.layers.values()):
            sim.observers = [_Observer(sample_per_batch, seed + 7919 * i + j) for j in range(sim.layer.num_act_inputs)]
            sim.patch_mean = _PatchMean(sim.layer) if sim.weight is not None else None
        # One channel observer per tensor that eligible layers read (the query, key and value of attention
        # read one), attached to the first of them: they share their smoothing factors.
        readers: dict = {}  # input node → the eligible layers reading it
        if self.smoothing:
            for name, sim in self.layers.items():
                if smoothing.eligible(sim.layer):
                    readers.setdefault(self._input_of[name], []).append(name)
        channels = []  # (the layers reading one tensor, its channel observer)
        index = {name: i for i, name in enumerate(self.layers)}
        for names in readers.values():
            first = self.layers[names[0]]
            first.channel_observer = _ChannelObserver(first.layer, 256, seed + 7919 * index[names[0]] + 101)
            channels.append((names, first.channel_observer))
        patches = {}  # weighted layer → its patch mean
        try:
            self.run(samples)
        finally:
            stats = {}
            for name, sim in self.layers.items():
                obs, sim.observers = sim.observers, None
                patch, sim.patch_mean = sim.patch_mean, None
                sim.channel_observer = None
                patches[name] = patch
                corr = patch.corrections(sim.weight.numpy()) if patch is not None else {}
                self._corrections[name] = corr
                stats[name] = tuple(
                    InputStats(o.lo, o.hi, np.concatenate(o.samples) if o.samples else np.zeros(0, np.float32),
                               corr if j == 0 else {})
                    for j, o in enumerate(obs)
                )
                self._smoothed_corrections.pop(name, None)
                if any(o.nonfinite for o in obs):
                    raise ValueError(f"calibration: NaN or Inf reaches the input of layer {name}")
            for n, (c, e, corr) in saved.items():
                self.layers[n].candidate, self.layers[n].encodings, self.layers[n].correction = c, e, corr
        self._smooth(stats, channels, patches)
        return stats

    def _smooth(self, stats: dict, channels, patches: dict) -> None:
        """Choose smoothing factors for each set of eligible layers reading one tensor (`channels`: their
        names and the tensor's channel observer) and add their smoothed stats. Layers reading the same
        tensor (the query, key and value of attention) share one set of factors, chosen on their weights
        together, so they keep sharing one quantize."""
        for names, chan in channels:
            if not chan.rows:
                continue
            lo, hi = chan.lo.numpy(), chan.hi.numpy()
            rows = np.concatenate(chan.rows)
            weights = [self.layers[n].weight.numpy() for n in names]
            s = smoothing.choose(rows, np.concatenate(weights), lo, hi)
            if s is None:
                continue
            for name, weight in zip(names, weights):
                patch = patches.get(name)
                corr = patch.smoothed_correction(weight, s) if patch is not None else None
                if corr is not None:
                    self._smoothed_corrections[name] = corr
                smoothed = InputStats(float(np.min(lo / s)), float(np.max(hi / s)), (rows / s).reshape(-1),
                                      {8: corr} if corr is not None else {}, factors=tuple(float(v) for v in s))
                stats[name] = (dataclasses.replace(stats[name][0], smoothed=smoothed),) + stats[name][1:]


class PrefixCache:
    """Runs one fixed sample set under many configurations without recomputing their common prefix.

    The stored activations are those of a reference configuration (by default every layer float). A
    configuration's first layer (in execution order) whose candidate or encodings differ from the
    reference is where it starts to differ; every value computed before that point equals the
    reference's, so a run resumes from the latest stored state at or before it and stores the state
    there for later runs (least recently used states go first when `max_bytes` is reached). The same
    operations run on the same batches as `Simulator.run`, so outputs are identical to it.
    """

    def __init__(self, sim: Simulator, samples: Sequence[tuple],
                 reference: tuple[Mapping[str, Candidate], Mapping[str, Sequence[ActEncoding]]] = ({}, {}),
                 max_bytes: int = 1 << 30):
        if len(samples) == 0:
            raise ValueError("no input samples given")
        self.sim, self.samples, self.max_bytes = sim, samples, max_bytes
        self._ref = {n: self._key(reference[0].get(n), reference[1].get(n, ())) for n in sim.layers}
        self._order = sorted(sim.positions.items(), key=lambda kv: kv[1])
        self._states: OrderedDict[int, list] = OrderedDict()  # position → per-batch {node: value}
        self._sizes: dict[int, int] = {}
        self.stats = {"runs": 0, "nodes_run": 0, "nodes_skipped": 0}

    @staticmethod
    def _key(c: Optional[Candidate], encodings) -> tuple:
        if c is None or (not c.is_quantized and c.float_dtype == "float32"):
            return ("FP32",)
        return (c.name, tuple(encodings)) if c.is_quantized else (c.name,)

    def start(self, candidates: Mapping[str, Candidate], encodings: Mapping[str, Sequence[ActEncoding]]) -> int:
        """The position of the first layer that differs from the reference (the output's when none does)."""
        for name, pos in self._order:
            if self._key(candidates.get(name), encodings.get(name, ())) != self._ref[name]:
                return pos
        return len(self.sim._nodes) - 1

    def _initial(self) -> list:
        return [dict(zip(self.sim._placeholders, batch)) for batch in self.sim._batches(self.samples)]

    @torch.no_grad()
    def run(self, candidates: Mapping[str, Candidate], encodings: Mapping[str, Sequence[ActEncoding]]) -> np.ndarray:
        """Configure the simulator and run the samples; equal to `configure` then `Simulator.run`."""
        sim = self.sim
        sim.configure(candidates, encodings)
        if not sim.resumable:
            return sim.run(self.samples)
        stop = self.start(candidates, encodings)
        stored = [p for p in self._states if p <= stop]
        pos = max(stored) if stored else 0
        envs = self._states[pos] if stored else self._initial()
        if stored:
            self._states.move_to_end(pos)
        outs, states = [], []
        for env in envs:
            env = dict(env)
            sim._execute(env, pos, stop)
            if stop > pos:
                states.append(dict(env))
            y = sim._execute(env, stop, len(sim._nodes))
            outs.append(y.float().numpy())
        if states:
            self._store(stop, states)
        self.stats["runs"] += 1
        self.stats["nodes_skipped"] += pos
        self.stats["nodes_run"] += len(sim._nodes) - pos
        return np.concatenate(outs)

    def _store(self, pos: int, states: list) -> None:
        size = sum(v.numel() * v.element_size() for env in states for n, v in env.items()
                   if isinstance(v, torch.Tensor) and n.op != "get_attr")  # parameters are shared, not copied
        if size > self.max_bytes:
            return
        while self._states and sum(self._sizes.values()) + size > self.max_bytes:
            old, _ = self._states.popitem(last=False)
            del self._sizes[old]
        self._states[pos], self._sizes[pos] = states, size

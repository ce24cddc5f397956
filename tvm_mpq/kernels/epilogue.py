"""Elementwise epilogues that a hand-written kernel applies to its register tile before storing it.

After lowering, every integer kernel is followed by its requantize (int32 → float32, divide, correction,
bias), usually an activation and the next layer's quantize (multiply, round, zero point, clamp, cast):
a separate elementwise pass that reads the kernel's int32 output back from memory and writes uint8.
An `Epilogue` is that chain as data, so the kernel computes it on the accumulators it already holds in
registers and stores the final dtype (a quarter of the bytes for uint8), and the pass disappears.

The ops are the ones TVM's legalization of the Relax ops emits, in the same order, so the fused kernel
returns bit for bit what the unfused chain returned (a float32 op sequence without multiply-then-add,
see `numerics`). Operands are immediates or one float32 value per output channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

from tvm.script import tirx as T

BINARY = ("div", "sub", "add", "mul", "max", "min")
OPS = BINARY + ("round",)
FLOAT_OUT = ("float32",)
INT_OUT = ("uint8", "int8", "int16", "int32")


@dataclass(frozen=True)
class Step:
    """One elementwise op: `x = op(x, operand)`; `vector` k: the k-th per-channel parameter row; else
    `imm`: an immediate float32 (round takes no operand)."""

    op: str
    vector: Optional[int] = None
    imm: float = 0.0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"epilogue op must be one of {OPS}, got {self.op!r}")


@dataclass(frozen=True)
class Epilogue:
    """`steps` on float32 values of the accumulator (converted from int32 first), then a cast to
    `out_dtype`. Per-channel operands are rows of one float32 parameter buffer [n_vectors, channels]."""

    steps: tuple[Step, ...]
    out_dtype: str = "float32"

    def __post_init__(self):
        if self.out_dtype not in FLOAT_OUT + INT_OUT:
            raise ValueError(f"epilogue output dtype {self.out_dtype!r} is not supported")

    @property
    def n_vectors(self) -> int:
        return 1 + max((s.vector for s in self.steps if s.vector is not None), default=-1)

    def key(self) -> str:
        return json.dumps({"steps": [[s.op, s.vector, s.imm] for s in self.steps], "out": self.out_dtype})

    def apply(self, x, lanes: int, param: Callable[[int], object]):
        """The TIR expression of the epilogue on float32 `x` of `lanes` lanes; `param(k)` gives the k-th
        per-channel operand as a float32 expression of `lanes` lanes."""
        ftype = "float32" if lanes == 1 else f"float32x{lanes}"

        def imm(value):
            return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)

        for s in self.steps:
            if s.op == "round":  # what TVM's round legalizes to on LLVM: nearbyint (half to even)
                x = T.call_llvm_pure_intrin(ftype, "llvm.nearbyint", x)
                continue
            v = param(s.vector) if s.vector is not None else imm(s.imm)
            if s.op == "div":
                x = x / v
            elif s.op == "sub":
                x = x - v
            elif s.op == "add":
                x = x + v
            elif s.op == "mul":
                x = x * v
            elif s.op == "max":
                x = T.max(x, v)
            else:
                x = T.min(x, v)
        if self.out_dtype == "float32":
            return x
        return T.Cast(self.out_dtype if lanes == 1 else f"{self.out_dtype}x{lanes}", x)


def to_float(acc, lanes: int, acc_dtype: str):
    """An accumulator expression of `acc_dtype` as float32 (int32 → float32 rounds to nearest, as TVM's
    astype does)."""
    if acc_dtype == "float32":
        return acc
    return T.Cast("float32" if lanes == 1 else f"float32x{lanes}", acc)

"""Model registry: built-in models with real calibration data, plus user models.

A model is described by a :class:`ModelSpec`: an eval-mode float32 ``torch.nn.Module``,
batch-1 ``example_inputs`` (the shapes that get compiled), a deterministic
``calibration(n)`` callable returning ``n`` input tuples, and optionally a
``labeled_eval()`` callable returning ``(inputs, labels)``.

``load_model(ref)`` accepts either a built-in name (see :func:`available_models`) or a
reference ``"package.module:factory"``.  **A factory reference imports and runs user code**
(the module's top level and the factory function) with the privileges of this process; only
load references you trust.  The factory may return

* a :class:`ModelSpec` (used as is),
* an ``nn.Module`` with an attribute ``example_inputs`` (a tensor or tuple of tensors), and
  optionally an attribute ``calibration`` (callable ``n -> list[tuple]``), or
* a tuple ``(module, example_inputs)``.

User models without a calibration callable get one that raises a clear error asking for a
calibration set.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "ModelSpec",
    "available_models",
    "load_model",
    "ModelLoadError",
    "CalibrationUnavailableError",
]


class ModelLoadError(ValueError):
    """A model reference could not be resolved or the factory returned something unusable."""


class CalibrationUnavailableError(RuntimeError):
    """The model has no built-in calibration data; a calibration set must be supplied."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: torch.nn.Module  # in eval mode, float32
    example_inputs: tuple  # batch-1 tensors, the shapes that get compiled
    calibration: Callable[[int], list[tuple]]  # n -> list of input tuples, deterministic
    description: str = ""
    labeled_eval: Callable[[], tuple[list[tuple], list[int]]] | None = None


# name -> (module under tvm_mpq.models, factory function, one-line description)
_BUILTINS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet_lite0",
        "build",
        "EfficientNet-Lite0, ImageNet weights, input [1,3,224,224]; calibration from real photos",
    ),
    "small_cnn": (
        "small_cnn",
        "build_small_cnn",
        "Small CNN trained in-repo on Fashion-MNIST, input [1,1,28,28]",
    ),
    "tiny_cnn": (
        "small_cnn",
        "build_tiny_cnn",
        "Untrained seeded small CNN, input [1,1,28,28]; Gaussian calibration (unit tests)",
    ),
    "tiny_transformer": (
        "tiny_transformer",
        "build",
        "One pre-LN transformer encoder block, d_model 64, 4 heads, seq 16 (unit tests)",
    ),
    "minilm_l6": (
        "minilm_l6",
        "build",
        "all-MiniLM-L6-v2 (BERT, 22.7M params), int64 inputs [1,128]; calibration from real reviews",
    ),
}


def available_models() -> list[str]:
    """Names of the built-in models (any name here is accepted by :func:`load_model`)."""
    return sorted(_BUILTINS)


def _no_calibration(name: str) -> Callable[[int], list[tuple]]:
    def calibration(n: int) -> list[tuple]:
        raise CalibrationUnavailableError(
            f"model {name!r} has no built-in calibration data: a calibration set must be given "
            "(pass calibration inputs explicitly, or return a ModelSpec / set a `calibration` "
            "attribute on the module in the factory)"
        )

    return calibration


def _as_input_tuple(example_inputs, ref: str) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        raise ModelLoadError(
            f"{ref}: example_inputs must be a tensor or a tuple of tensors, got "
            f"{type(example_inputs).__name__}"
        )
    return tuple(example_inputs)


def _wrap(obj, ref: str) -> ModelSpec:
    """Turn whatever a factory returned into a ModelSpec."""
    if isinstance(obj, ModelSpec):
        obj.module.eval()
        return obj
    if isinstance(obj, torch.nn.Module):
        if not hasattr(obj, "example_inputs"):
            raise ModelLoadError(
                f"{ref}: factory returned an nn.Module without an `example_inputs` attribute; "
                "set module.example_inputs, or return (module, example_inputs) or a ModelSpec"
            )
        module, example_inputs = obj, obj.example_inputs
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], torch.nn.Module):
        module, example_inputs = obj
    else:
        raise ModelLoadError(
            f"{ref}: factory must return a ModelSpec, an nn.Module with `example_inputs`, or a "
            f"tuple (module, example_inputs); got {type(obj).__name__}"
        )
    example_inputs = _as_input_tuple(example_inputs, ref)
    module = module.eval().float()
    calibration = getattr(module, "calibration", None)
    if not callable(calibration):
        calibration = _no_calibration(ref)
    return ModelSpec(
        name=ref,
        module=module,
        example_inputs=example_inputs,
        calibration=calibration,
        description=f"user model from {ref}",
    )


def _load_factory_ref(ref: str) -> ModelSpec:
    modname, _, attr = ref.partition(":")
    modname, attr = modname.strip(), attr.strip()
    if not modname or not attr:
        raise ModelLoadError(f"bad model reference {ref!r}: expected 'package.module:factory'")
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise ModelLoadError(
            f"cannot import module {modname!r} for model reference {ref!r}: {e}"
        ) from e
    factory = mod
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(
                f"module {modname!r} has no attribute {attr!r} (model reference {ref!r})"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"{ref}: {attr!r} is not callable")
    return _wrap(factory(), ref)


def load_model(ref: str) -> ModelSpec:
    """Load a built-in model by name, or a user model from ``"package.module:factory"``.

    Note: a ``module:factory`` reference imports that module and calls the factory, i.e. it
    runs arbitrary user code.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ModelLoadError(f"model reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref in _BUILTINS:
        modname, factory, _ = _BUILTINS[ref]
        mod = importlib.import_module(f"{__name__}.{modname}")
        return getattr(mod, factory)()
    if ":" in ref:
        return _load_factory_ref(ref)
    raise ModelLoadError(
        f"unknown model {ref!r}; available models: {', '.join(available_models())} "
        "(or give a user factory as 'package.module:factory')"
    )

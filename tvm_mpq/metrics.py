"""Task metrics for phase 3: a score of a model's outputs, higher is better.

The search selects by output SQNR against the float model by default (unlabeled). A `Metric` replaces
that with a task score: a labeled set (its inputs and a scoring function that knows the labels), or a
user callable scored on the search's held-out samples. Built-in labeled evaluators:

- ``efficientnet_lite0``: top-1 on the 20 labeled ImageNet photos of the ``foolbox`` wheel. Twenty
  images are a sanity check of a plan, not an accuracy figure.
- ``small_cnn``: Fashion-MNIST test accuracy (the 10k test images, or the first ``n``).
- ``minilm_l6``: accuracy of a logistic-regression probe on mean-pooled sentence embeddings of the
  fresh/rotten review texts. The probe is trained once on FP32 embeddings of a train split and then
  scores the embeddings of any plan on the disjoint test split (the model's 256 held-out texts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Metric:
    """`score(outputs)`: outputs of the model on `inputs`, stacked on axis 0 → a number, higher is better.

    `inputs` None: the search's held-out samples are scored (a user callable that knows their labels).
    """

    name: str
    score: Callable[[np.ndarray], float]
    inputs: Optional[Sequence[tuple]] = None
    unit: str = ""
    note: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit, "note": self.note,
                "samples": None if self.inputs is None else len(self.inputs), **self.details}


def as_metric(metric, spec=None) -> Optional[Metric]:
    """None / "sqnr" → None (output SQNR); "labeled" → the model's built-in labeled evaluator;
    a Metric as is; a callable → a Metric scoring the held-out samples' outputs."""
    if metric is None or (isinstance(metric, str) and metric == "sqnr"):
        return None
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric != "labeled":
            raise ValueError(f"unknown metric {metric!r}: 'sqnr', 'labeled', a Metric or a callable")
        if spec is None:
            raise ValueError("metric 'labeled' needs the model")
        return labeled_metric(spec)
    if callable(metric):
        return Metric(getattr(metric, "__name__", "user"), metric)
    raise ValueError(f"metric must be 'sqnr', 'labeled', a Metric or a callable, got {type(metric).__name__}")


def top1(inputs: Sequence[tuple], labels: Sequence[int], name: str = "top1", note: str = "") -> Metric:
    """Top-1 accuracy of class logits [N, classes] against integer labels."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(inputs) != len(labels) or len(labels) == 0:
        raise ValueError(f"a labeled set needs as many labels as inputs (got {len(inputs)} inputs, "
                         f"{len(labels)} labels)")

    def score(outputs: np.ndarray) -> float:
        if outputs.ndim != 2 or outputs.shape[0] != len(labels):
            raise ValueError(f"top-1 needs logits [{len(labels)}, classes], got {tuple(outputs.shape)}")
        return float(np.mean(outputs.argmax(1) == labels))

    return Metric(name, score, tuple(inputs), "accuracy", note)


def labeled_metric(spec, n: Optional[int] = None) -> Metric:
    """The built-in labeled evaluator of a model spec (see the module docstring)."""
    name = spec.name
    if name == "minilm_l6":
        return minilm_probe(spec)
    if spec.labeled_eval is None:
        raise ValueError(f"model {name!r} has no labeled data: give a Metric or a callable instead")
    inputs, labels = spec.labeled_eval()
    if n is not None:
        inputs, labels = inputs[:n], labels[:n]
    if name == "efficientnet_lite0":
        return top1(inputs, labels, "imagenet_photos_top1",
                    note=f"top-1 on {len(labels)} labeled ImageNet photos: a sanity check, not an accuracy figure")
    if name == "small_cnn":
        return top1(inputs, labels, "fashion_mnist_test_accuracy", note=f"Fashion-MNIST test set, {len(labels)} images")
    return top1(inputs, labels)


def mean_pooled(hidden: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers pools them: mean over unmasked tokens, L2-normalised."""
    m = masks.astype(np.float32)[..., None]
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def minilm_probe(spec, n_train: int = 1024, batch: int = 32, seed: int = 0) -> Metric:
    """Logistic-regression probe accuracy on MiniLM sentence embeddings (fresh vs rotten reviews).

    Train split: the `n_train` reviews just before the model's held-out texts, embedded by the float
    model; test split: the 256 held-out texts (disjoint from the train split).
    """
    from sklearn.linear_model import LogisticRegression

    from .models import minilm_l6

    rows = minilm_l6.reviews()
    train_rows = rows[-minilm_l6.N_EVAL - n_train:-minilm_l6.N_EVAL]
    train_inputs = [minilm_l6.encode(t) for t, _ in train_rows]
    y_train = np.array([y for _, y in train_rows])
    test_inputs, y_test = spec.labeled_eval()
    y_test = np.asarray(y_test)

    hidden = []
    with torch.no_grad():
        for i in range(0, len(train_inputs), batch):
            part = train_inputs[i:i + batch]
            ids, mask = torch.cat([s[0] for s in part]), torch.cat([s[1] for s in part])
            hidden.append(spec.module(ids, mask).float().numpy())
    masks_train = np.concatenate([s[1].numpy() for s in train_inputs])
    probe = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    probe.fit(mean_pooled(np.concatenate(hidden), masks_train), y_train)
    masks_test = np.concatenate([s[1].numpy() for s in test_inputs])

    def score(outputs: np.ndarray) -> float:
        if outputs.shape[0] != len(y_test):
            raise ValueError(f"the probe scores {len(y_test)} texts, got outputs for {outputs.shape[0]}")
        return float(probe.score(mean_pooled(outputs, masks_test), y_test))

    return Metric("review_probe_accuracy", score, tuple(test_inputs), "accuracy",
                  note=f"logistic-regression probe on mean-pooled embeddings, trained on FP32 embeddings of "
                       f"{n_train} reviews, tested on {len(y_test)} held-out reviews",
                  details={"train_accuracy_fp32": float(probe.score(mean_pooled(np.concatenate(hidden), masks_train),
                                                                     y_train))})

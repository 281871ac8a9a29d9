"""Image data sets: built-in digits, any folder of images, torchvision's MNIST / Fashion-MNIST / CIFAR-10.

Every loader returns a :class:`~multidiff.modality.TensorDataset` of ``(N, C, H, W)`` images in
[-1, 1] (decoded once, held in memory) or, for folders too large for memory, a lazy dataset
that decodes one file per item; plus the :class:`~multidiff.modality.DataInfo`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from multidiff.captions import (
    Attribute,
    CaptionedTensorDataset,
    compose_caption,
    held_out_mask,
    read_captions,
    variants_of_examples,
)
from multidiff.modality import DataInfo, TensorDataset, read_each, scan_labelled_folder

from .io import IMAGE_SUFFIXES, read_image, resize_center_crop

__all__ = [
    "digits",
    "captioned_digits",
    "DIGIT_ATTRIBUTES",
    "DIGIT_TEMPLATES",
    "DIGIT_FACTORS",
    "DIGITS_HELD_OUT",
    "image_folder",
    "torchvision_set",
    "scan_folder",
    "LazyImageFolder",
    "DEFAULT_ROOT",
]

DEFAULT_ROOT = Path(os.environ.get("MULTIDIFF_DATA", Path.home() / ".cache" / "multidiff" / "datasets"))


def _to_channels(x: Tensor, channels: int) -> Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:  # ITU-R BT.601 luma
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).reshape(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def _resize_batch(x: Tensor, size: tuple[int, int], chunk: int = 4096) -> Tensor:
    return torch.cat([resize_center_crop(x[i : i + chunk], size) for i in range(0, x.shape[0], chunk)])


def digits(size: tuple[int, int], channels: int = 1) -> tuple[TensorDataset, DataInfo]:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upscaled bilinearly; ships with
    scikit-learn, so it needs no download. Ink is bright on a dark background, as in MNIST."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < 8)
    x = _to_channels(x.clamp(0, 1) * 2 - 1, channels)
    labels = torch.as_tensor(d.target, dtype=torch.long)
    return TensorDataset(x.contiguous(), labels), DataInfo((channels, *size), 10, tuple(str(i) for i in range(10)))


_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# What a captioned digit's caption states, and the phrases that say it (synonyms).
DIGIT_ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "digit",
            tuple(str(k) for k in range(10)),
            {str(k): (str(k), w, f"digit {k}", f"number {w}", f"handwritten {k}") for k, w in enumerate(_DIGIT_WORDS)},
            unsaid=("digit", "number", "handwritten digit"),
        ),
        Attribute(
            "thickness",
            ("thin", "thick"),
            {
                "thin": ("thin", "fine", "light", "skinny", "thin-stroked"),
                "thick": ("thick", "bold", "heavy", "fat", "thick-stroked"),
            },
        ),
        Attribute(
            "size", ("small", "large"), {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
        ),
        Attribute(
            "slant",
            ("left", "upright", "right"),
            {
                "left": ("leaning left", "slanted to the left", "tilted to the left", "leaning to the left"),
                "upright": ("upright", "standing upright", "standing straight", "not slanted"),
                "right": ("leaning right", "slanted to the right", "tilted to the right", "leaning to the right"),
            },
        ),
        Attribute(
            "position",
            ("left", "center", "right"),
            {
                "left": ("on the left", "at the left", "in the left part of the image", "toward the left side"),
                "center": ("in the middle", "in the center", "centered", "in the centre"),
                "right": ("on the right", "at the right", "in the right part of the image", "toward the right side"),
            },
        ),
    )
}

# Word order varies with the template: the digit first or last, attributes before or after it.
DIGIT_TEMPLATES = (
    "a {thickness}, {size} {digit} {slant} {position}",
    "a {size} {thickness} {digit}, {slant}, {position}",
    "{position}, a {size} {digit} {slant}, {thickness}",
    "{digit}: {size}, {thickness}, {slant}, {position}",
    "a {digit} {position}, {size} and {thickness}, {slant}",
    "{slant} {position}: a {thickness} {size} {digit}",
    "an image of a {size}, {thickness} {digit} {slant}, {position}",
    "{size} {thickness} {digit} {position}, {slant}",
)

# The factors a digit's caption is composed of (``data.caption_factors``): each attribute alone.
DIGIT_FACTORS: tuple[tuple[str, ...], ...] = (("digit",), ("thickness",), ("size",), ("slant",), ("position",))

# Attribute combinations no training example has (the "train" split leaves them out), for testing
# whether a model composes attributes it has only seen apart.
DIGITS_HELD_OUT: tuple[dict[str, str], ...] = (
    {"digit": "7", "thickness": "thick", "slant": "left"},
    {"digit": "2", "size": "small", "position": "right"},
    {"digit": "0", "thickness": "thin", "size": "large", "slant": "right"},
    {"digit": "4", "thickness": "thick", "position": "left"},
)

_DIGIT_SCALE = {"small": 0.5, "large": 0.85}  # the digit's height over the image's
_DIGIT_SHEAR = {"left": -0.35, "upright": 0.0, "right": 0.35}  # x shift per unit of height, top to the right


def _render_digits(src: Tensor, scale: Tensor, shear: Tensor, shift: Tensor, thick: Tensor, work: int) -> Tensor:
    """Ink in [0, 1], ``(N, 1, work, work)``: the 8x8 grey digits ``src (N, 1, 8, 8)`` (in [0, 1])
    sampled bicubically through ``x = scale * (u - shear * v) + shift``, ``y = scale * v`` (canvas
    [-1, 1]^2, ``v`` downwards), then thresholded: thin strokes where the grey level exceeds 0.45,
    thick ones where a 3x3 dilation of it exceeds 0.15 (a 0.25-wide ramp to full ink)."""
    lin = (torch.arange(work, dtype=torch.float32) + 0.5) / work * 2 - 1
    yc, xc = torch.meshgrid(lin, lin, indexing="ij")
    s = scale[:, None, None]
    y = yc[None] / s
    x = (xc[None] - shift[:, None, None]) / s + shear[:, None, None] * y
    v = F.grid_sample(src, torch.stack([x, y], -1), mode="bicubic", padding_mode="zeros", align_corners=False)
    v = v.clamp(0, 1)
    v = torch.where(thick[:, None, None, None], F.max_pool2d(v, 3, 1, 1), v)
    lo = torch.where(thick, 0.15, 0.45)[:, None, None, None]
    return ((v - lo) / 0.25).clamp(0, 1)


def captioned_digits(
    size: tuple[int, int],
    channels: int = 1,
    *,
    copies: int = 1,
    seed: int = 0,
    split: str = "train",
    held_out: tuple[dict[str, str], ...] = DIGITS_HELD_OUT,
    caption_variants: int = 0,
    caption_drop: float = 0.0,
    caption_factors: bool = False,
) -> tuple[CaptionedTensorDataset, DataInfo]:
    """scikit-learn's handwritten digits drawn with attributes a caption states: stroke thickness
    (thin, thick), size (small: half the image's height, large: 85%), slant (left, upright, right:
    a shear of 0.35) and horizontal position (left, centre, right, as far as the digit fits); the
    class is the digit. Needs no download.

    Each of the 1,797 digits is drawn ``copies`` times, every copy with attributes drawn uniformly
    from ``seed`` (and a little jitter: size 4%, shear 0.05, position 0.03), rendered at four times
    the resolution and area-averaged to ``size``. Its caption comes from :data:`DIGIT_TEMPLATES`
    with synonyms (:data:`DIGIT_ATTRIBUTES`): "a bold, tiny seven leaning left in the middle".

    ``split``: ``"train"`` leaves out every example matching a ``held_out`` combination
    (:data:`DIGITS_HELD_OUT`), ``"held_out"`` keeps only those, ``"all"`` keeps everything. The
    data set holds each example's attribute codes (``attributes``, ``attribute_values``).
    ``caption_variants``: that many more captions of each example (``variants``), the thickness,
    size, slant and position each left unsaid with probability ``caption_drop``
    (:func:`multidiff.captions.caption_variants`); the digit is always said. ``caption_factors``:
    one more caption per attribute, saying only it ("a thick digit", :data:`DIGIT_FACTORS`,
    :func:`multidiff.captions.factor_captions`).
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    d = load_digits()
    src = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    target = torch.as_tensor(d.target, dtype=torch.long)
    src, target = src.repeat(copies, 1, 1, 1), target.repeat(copies)
    n = len(target)
    g = torch.Generator().manual_seed(seed)
    attrs = DIGIT_ATTRIBUTES
    codes = {"digit": target}
    for name in ("thickness", "size", "slant", "position"):
        codes[name] = torch.randint(len(attrs[name].values), (n,), generator=g)
    jitter = torch.rand(n, 3, generator=g) * 2 - 1
    scale = torch.tensor([_DIGIT_SCALE[v] for v in attrs["size"].values])[codes["size"]] * (1 + 0.04 * jitter[:, 0])
    shear = torch.tensor([_DIGIT_SHEAR[v] for v in attrs["slant"].values])[codes["slant"]] + 0.05 * jitter[:, 1]
    # as far left or right as the digit (about 0.68 of its height wide, plus its slant) fits
    room = (0.95 - scale * (0.68 + shear.abs())).clamp(min=0.1)
    shift = (codes["position"] - 1).float() * room + 0.03 * jitter[:, 2]
    thick = codes["thickness"] == attrs["thickness"].code("thick")
    work = 4 * max(size)
    x = torch.empty(n, 1, *size)
    for i in range(0, n, 512):
        b = slice(i, i + 512)
        ink = _render_digits(src[b], scale[b], shear[b], shift[b], thick[b], work)
        x[b] = F.interpolate(ink, size=size, mode="area")
    keep = held_out_mask(codes, attrs, held_out)
    keep = ~keep if split == "train" else keep if split == "held_out" else torch.ones(n, dtype=torch.bool)
    idx = keep.nonzero().squeeze(1)
    rng = random.Random(seed)
    names = {k: attrs[k].values for k in codes}
    values = [{k: names[k][int(codes[k][i])] for k in codes} for i in range(n)]
    captions = [compose_caption(v, attrs, DIGIT_TEMPLATES, rng) for v in values]
    variants = variants_of_examples(
        values,
        attrs,
        DIGIT_TEMPLATES,
        count=caption_variants,
        drop=caption_drop,
        keep=("digit",),
        seed=seed,
        factors=DIGIT_FACTORS if caption_factors else (),
    )
    ds = CaptionedTensorDataset(
        _to_channels(x * 2 - 1, channels).contiguous(),
        target,
        captions,
        codes,
        {k: attrs[k].values for k in codes},
        variants,
    ).subset(idx)
    extra = {
        "source": "captioned_digits",
        "split": split,
        "held_out": [dict(h) for h in held_out],
        "captions": True,
        "caption_variants": caption_variants,
        "caption_drop": caption_drop,
        "caption_factors": bool(caption_factors),
    }
    return ds, DataInfo((channels, *size), 10, tuple(str(i) for i in range(10)), extra)


def scan_folder(path: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``path`` labelled by sub-folder (see :func:`multidiff.modality.scan_labelled_folder`)."""
    return scan_labelled_folder(path, IMAGE_SUFFIXES, "images")


class LazyImageFolder(Dataset):
    """Decode one file per item (for folders too large to hold in memory); ``captions`` (one per
    file) when the folder is captioned."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        size: tuple[int, int],
        channels: int,
        captions: list[str] | None = None,
    ) -> None:
        self.files, self.labels, self.size, self.channels = files, labels, size, channels
        self.captions = captions

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = resize_center_crop(read_image(self.files[i], self.channels), self.size)
        return x.contiguous(), torch.tensor(self.labels[i])


def image_folder(
    path: str | Path,
    size: tuple[int, int],
    channels: int = 3,
    *,
    labels: bool = True,
    in_memory: bool = True,
    limit: int | None = None,
    on_bad: str = "error",
    captions: bool = False,
) -> tuple[Dataset, DataInfo]:
    """Any folder of PNG/JPEG/BMP/WebP images, resized to cover ``size`` and centre-cropped.

    Every file is opened before training starts, so a corrupt file fails the run at once, with
    its name, instead of hours in; ``on_bad="skip"`` leaves such files out and counts them
    (``info.extra["skipped_files"]``). With ``captions`` each image takes its caption from the
    folder's ``metadata.jsonl`` or its sidecar ``.txt`` (:func:`multidiff.captions.read_captions`;
    an image without a usable caption is a bad file), and the data set has ``captions``.
    """
    from PIL import Image, UnidentifiedImageError

    files, labs, classes = scan_folder(path)
    texts: list[str] | None = None
    uncaptioned = 0
    if captions:
        kept, texts = read_captions(path, files, on_bad=on_bad, what="images")
        uncaptioned = len(files) - len(kept)
        files, labs = [files[i] for i in kept], [labs[i] for i in kept]
    if limit is not None:
        files, labs = files[:limit], labs[:limit]
        texts = texts[:limit] if texts is not None else None
    if not labels:
        labs, classes = [-1] * len(files), []
    order = list(range(len(files)))  # read_each keeps these for the files it reads
    if not in_memory:

        def verify(f: Path) -> Path:
            try:
                with Image.open(f) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"cannot read image {str(f)!r}: {e}") from None
            return f

        kept_files, kept, bad = read_each(files, order, verify, on_bad=on_bad, what="images")
        extra = {"source": str(path), "skipped_files": len(bad) + uncaptioned}
        if captions:
            extra["captions"] = True
        info = DataInfo((channels, *size), len(classes), tuple(classes), extra)
        kept_texts = [texts[i] for i in kept] if texts is not None else None
        return LazyImageFolder(kept_files, [labs[i] for i in kept], size, channels, kept_texts), info
    read = lambda f: resize_center_crop(read_image(f, channels), size).contiguous()  # noqa: E731
    items, kept, bad = read_each(files, order, read, on_bad=on_bad, what="images")
    extra = {"source": str(path), "skipped_files": len(bad) + uncaptioned}
    if captions:
        extra["captions"] = True
    info = DataInfo((channels, *size), len(classes), tuple(classes), extra)
    x, y = torch.stack(items), torch.tensor([labs[i] for i in kept], dtype=torch.long)
    if texts is not None:
        return CaptionedTensorDataset(x, y, [texts[i] for i in kept]), info
    return TensorDataset(x, y), info


_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def torchvision_set(
    name: str,
    size: tuple[int, int],
    channels: int,
    *,
    root: str | Path | None = None,
    download: bool = False,
    train: bool = True,
    limit: int | None = None,
) -> tuple[TensorDataset, DataInfo]:
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision; downloads only when ``download`` is set."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    root = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
        if not download:
            raise ValueError(
                f"{cls.__name__} is not in {str(root)!r}; set data.download=true to download it (needs internet), "
                f"or data.root to where it is"
            ) from None
        raise ValueError(f"could not download {cls.__name__} to {str(root)!r}: {e}") from None
    except OSError as e:  # URLError and socket errors: offline
        raise ValueError(f"could not download {cls.__name__} to {str(root)!r} (offline?): {e}") from None
    data = torch.as_tensor(ds.data)
    x = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)
    y = torch.as_tensor(ds.targets, dtype=torch.long)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = _to_channels(x.float() / 127.5 - 1, channels)
    if tuple(x.shape[-2:]) != size:
        x = _resize_batch(x, size)
    return TensorDataset(x.contiguous(), y), DataInfo((channels, *size), len(ds.classes), tuple(ds.classes))

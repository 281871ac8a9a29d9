"""Image data sets: built-in digits, any folder of images, torchvision's MNIST / Fashion-MNIST / CIFAR-10.

Every loader returns a :class:`~multidiff.modality.TensorDataset` of ``(N, C, H, W)`` images in
[-1, 1] (decoded once, held in memory) or, for folders too large for memory, a lazy dataset
that decodes one file per item; plus the :class:`~multidiff.modality.DataInfo`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from multidiff.modality import DataInfo, TensorDataset, read_each, scan_labelled_folder

from .io import IMAGE_SUFFIXES, read_image, resize_center_crop

__all__ = ["digits", "image_folder", "torchvision_set", "scan_folder", "LazyImageFolder", "DEFAULT_ROOT"]

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


def scan_folder(path: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``path`` labelled by sub-folder (see :func:`multidiff.modality.scan_labelled_folder`)."""
    return scan_labelled_folder(path, IMAGE_SUFFIXES, "images")


class LazyImageFolder(Dataset):
    """Decode one file per item (for folders too large to hold in memory)."""

    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int], channels: int) -> None:
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

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
) -> tuple[Dataset, DataInfo]:
    """Any folder of PNG/JPEG/BMP/WebP images, resized to cover ``size`` and centre-cropped.

    Every file is opened before training starts, so a corrupt file fails the run at once, with
    its name, instead of hours in; ``on_bad="skip"`` leaves such files out and counts them
    (``info.extra["skipped_files"]``).
    """
    from PIL import Image, UnidentifiedImageError

    files, labs, classes = scan_folder(path)
    if limit is not None:
        files, labs = files[:limit], labs[:limit]
    if not labels:
        labs, classes = [-1] * len(files), []
    if not in_memory:

        def verify(f: Path) -> Path:
            try:
                with Image.open(f) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"cannot read image {str(f)!r}: {e}") from None
            return f

        files, labs, bad = read_each(files, labs, verify, on_bad=on_bad, what="images")
        info = DataInfo(
            (channels, *size), len(classes), tuple(classes), {"source": str(path), "skipped_files": len(bad)}
        )
        return LazyImageFolder(files, labs, size, channels), info
    read = lambda f: resize_center_crop(read_image(f, channels), size).contiguous()  # noqa: E731
    items, labs, bad = read_each(files, labs, read, on_bad=on_bad, what="images")
    info = DataInfo((channels, *size), len(classes), tuple(classes), {"source": str(path), "skipped_files": len(bad)})
    return TensorDataset(torch.stack(items), torch.tensor(labs, dtype=torch.long)), info


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

"""The image adapter: config sections, 2D UNet presets, data sets, augmentation and PNG output."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from multidiff.modality import (
    DIT_TINY,
    DataConfig,
    DataInfo,
    DemoRun,
    Modality,
    PresetModelConfig,
    StrictModel,
    coin_flips,
    demo_config,
    finish_dataset,
    input_file,
    mask_from_array,
    read_npy,
)

from . import data as D
from .io import IMAGE_SUFFIXES, read_image, resize_center_crop, save_grid

__all__ = ["PRESETS", "ImageModelConfig", "ImageDataConfig", "ImageModality", "build_unet", "read_mask_image"]

# 2D UNet presets, smallest to largest. ``attention_resolutions`` are side lengths (as in DDPM:
# attention at 16x16 for 32x32 images); the adapter turns them into UNet levels for the data size.
PRESETS: dict[str, dict[str, Any]] = {
    # a few minutes on 2 CPU cores at 16x16 (about 1.5M parameters)
    "tiny": {
        "channels": 32,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [8],
        "dropout": 0.0,
    },
    # a laptop GPU at 32x32 (about 9M parameters)
    "small": {
        "channels": 64,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": 2,
        "attention_resolutions": [16],
        "dropout": 0.1,
    },
    # DDPM's CIFAR-10 model (Ho et al. 2020, appendix B: 128 channels, 4 levels, attention at 16x16)
    "ddpm_cifar10": {
        "channels": 128,
        "channel_mult": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attention_resolutions": [16],
        "dropout": 0.1,
    },
    # a diffusion transformer (multidiff.transformer.DiT, adaLN-Zero; U-ViT long skips on request)
    # with 2x2 patches: 64 tokens at 16x16, 256 at 32x32
    "dit_tiny": {**DIT_TINY, "patch_size": 2},
}


class ImageModelConfig(PresetModelConfig):
    """The ``model:`` section: a preset, any of whose values may be overridden."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny", "small", "ddpm_cifar10", "dit_tiny"] = "tiny"
    attention_resolutions: list[int] | None = None
    # text conditioning: cross-attention at these sides (as attention_resolutions); or give
    # cross_attention_levels; neither: where self-attention is
    cross_attention_resolutions: list[int] | None = None

    @model_validator(mode="after")
    def _one_cross_attention_key(self) -> ImageModelConfig:
        if self.cross_attention_resolutions is not None and self.cross_attention_levels is not None:
            raise PydanticCustomError(  # named as model.cross_attention_levels
                "cross_attention_keys",
                "give cross_attention_resolutions (image sides) or cross_attention_levels, not both",
                {"loc": ("cross_attention_levels",)},
            )
        return self

    def unet_args(self, info: DataInfo) -> dict[str, Any]:
        """The preset's UNet arguments, ``attention_resolutions`` and ``cross_attention_resolutions``
        (sides) turned into the levels whose side (the larger image side, halved per level) is listed."""
        r = self.resolved()
        patch = r.get("patch_size", 1)
        patch = [patch] * (len(info.shape) - 1) if isinstance(patch, int) else patch
        side = max(-(-s // p) for s, p in zip(info.shape[1:], patch))  # the first level's side

        def levels(resolutions: list[int]) -> list[int]:
            return [lvl for lvl in range(len(r["channel_mult"])) if -(-side // 2**lvl) in resolutions]

        r["attention_levels"] = levels(r.pop("attention_resolutions"))
        if "cross_attention_resolutions" in r:
            r["cross_attention_levels"] = levels(r.pop("cross_attention_resolutions"))
        return r


class ImageDataConfig(DataConfig):
    """The ``data:`` section.

    ``source``: ``digits`` (built in, no download), ``folder`` (``path`` to a folder of images,
    classes from sub-folders), or ``mnist`` / ``fashion_mnist`` / ``cifar10`` (torchvision, in
    ``root``; fetched only with ``download: true``).
    """

    folder_files = "images"

    source: Literal["digits", "folder", "mnist", "fashion_mnist", "cifar10"] = "digits"
    root: str | None = None
    download: bool = False
    size: int | tuple[int, int] = 16
    channels: Literal[1, 3] | None = None
    random_flip: bool = False
    in_memory: bool = True

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        sides = (v, v) if isinstance(v, int) else v
        if any(s < 1 for s in sides):
            raise ValueError(f"size must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _flip_keeps_captions_true(self) -> ImageDataConfig:
        if self.captions and self.random_flip:
            raise PydanticCustomError(  # named as data.random_flip
                "flip_captions",
                'random_flip mirrors left and right, which captions state ("leaning left", "on the right"); '
                "turn it off with captions: true",
                {"loc": ("random_flip",)},
            )
        return self

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        if self.channels is not None:
            return self.channels
        return 1 if self.source in ("digits", "mnist", "fashion_mnist") else 3


def _cover_crop_nearest(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A bool ``(1, H, W)`` mask resized as :func:`~.io.resize_center_crop` resizes an image (cover
    ``size`` keeping the aspect ratio, crop the centre), by nearest neighbour, so it lines up with
    the image it was drawn on."""
    h, w = mask.shape[-2:]
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = mask[None].float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="nearest-exact")
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[0, :, top : top + th, left : left + tw] > 0.5


def read_mask_image(path: Path) -> Tensor:
    """A picture as a bool mask ``(1, H, W)``: True where it is white, i.e. where its brightest colour
    channel is at least half of full scale (alpha ignored), or nonzero when it holds only 0s and 1s
    (a label map). ``ValueError`` naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
            bands = im.getbands()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read mask {str(path)!r}: {e}") from None
    if arr.ndim == 3:
        arr = arr[..., [i for i, b in enumerate(bands) if b != "A"]].max(-1)
    if arr.dtype == bool:
        mask = arr
    elif arr.max() <= 1:
        mask = arr > 0
    else:
        full = 255 if arr.dtype == np.uint8 else 65535  # 8-bit, or 16-bit PNG (PIL's I;16 and I modes)
        mask = arr >= (full + 1) // 2
    return torch.from_numpy(np.ascontiguousarray(mask))[None]


def build_unet(
    model: ImageModelConfig, info: DataInfo, *, noise_scale: float = 1.0, learned_variance: bool = False
) -> nn.Module:
    """The 2D network of ``model`` for images of ``info.shape``: a UNet, whose attention goes to the
    levels whose side (the larger image side, halved per level) is listed in ``attention_resolutions``,
    or a DiT (``model.backbone: dit``)."""
    return model.build_network(2, info, noise_scale=noise_scale, learned_variance=learned_variance)


class ImageModality(Modality[ImageModelConfig, ImageDataConfig]):
    name: ClassVar[str] = "image"
    diffusers_classes: ClassVar[tuple[str, ...]] = ("UNet2DModel", "UNet2DConditionModel")
    ModelConfig: ClassVar[type[StrictModel]] = ImageModelConfig
    DataConfig: ClassVar[type[StrictModel]] = ImageDataConfig
    input_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    mask_suffixes: ClassVar[tuple[str, ...]] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".npy")

    def build_dataset(self, data: ImageDataConfig) -> tuple[torch.utils.data.Dataset, DataInfo]:
        size, ch = data.hw, data.num_channels
        if data.source == "digits" and data.captions:
            ds, info = D.captioned_digits(
                size,
                ch,
                split=data.split,
                caption_variants=data.caption_variants,
                caption_drop=data.caption_drop,
                caption_factors=data.caption_factors,
            )
            if data.limit is not None:
                ds = ds.subset(range(min(data.limit, len(ds))))
        elif data.source == "digits":
            ds, info = D.digits(size, ch)
            if data.limit is not None:
                ds = type(ds)(ds.x[: data.limit], ds.labels[: data.limit])
        elif data.source == "folder":
            assert data.path is not None
            ds, info = D.image_folder(
                data.path,
                size,
                ch,
                labels=data.class_conditional,
                in_memory=data.in_memory,
                limit=data.limit,
                on_bad=data.on_bad_file,
                captions=data.captions,
            )
        elif data.captions:
            raise ValueError(
                f"data.captions: the {data.source!r} set has no captions; captioned sources: digits "
                "(attributes drawn and stated) and folder (metadata.jsonl or sidecar .txt files)"
            )
        else:
            ds, info = D.torchvision_set(
                data.source, size, ch, root=data.root, download=data.download, limit=data.limit
            )
        return finish_dataset(ds, info, limit=None, class_conditional=data.class_conditional)

    def build_network(
        self, model: ImageModelConfig, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:
        return build_unet(model, info, noise_scale=noise_scale, learned_variance=learned_variance)

    def augment(self, x: Tensor, data: ImageDataConfig, generator: torch.Generator) -> Tensor:
        if not data.random_flip:
            return x
        return torch.where(coin_flips(x, generator), x.flip(-1), x)

    def read_input(self, path: Path, info: DataInfo, data: ImageDataConfig | None = None) -> Tensor:
        """A PNG/JPEG/BMP/WebP file as ``info.shape = (C, H, W)`` in [-1, 1], as a folder source reads
        it: RGB, or BT.601 luma for one channel (an RGB model repeats a grey file's channel), resized
        to cover ``(H, W)`` keeping its aspect ratio and centre-cropped. ``data`` is not needed."""
        p = input_file(path, self.input_suffixes, "the 'image' modality")
        channels, size = info.shape[0], tuple(info.shape[1:])
        if channels not in (1, 3):
            raise ValueError(f"cannot read {str(p)!r} for images of {channels} channels: only 1 or 3 are supported")
        return resize_center_crop(read_image(p, channels), size).contiguous()  # type: ignore[arg-type]

    def read_mask(self, path: Path, info: DataInfo) -> Tensor:
        """A mask ``(1, H, W)`` (True: generate) from a picture (white: generate; see
        :func:`read_mask_image`), resized by nearest neighbour the way :meth:`read_input` resizes the
        image it goes with, or a ``.npy`` array (nonzero: generate) at the model's size exactly."""
        p = input_file(path, self.mask_suffixes, "the 'image' modality's masks")
        if p.suffix.lower() == ".npy":
            return mask_from_array(read_npy(p, "mask"), p, info)
        return _cover_crop_nearest(read_mask_image(p), tuple(info.shape[1:]))  # type: ignore[arg-type]

    def save_samples(self, x: Tensor, path: Path, info: DataInfo, *, labels: Tensor | None = None) -> list[Path]:
        """One PNG grid; for class-conditional samples in the default label order, one class per column."""
        nrow = None
        if (
            labels is not None
            and info.num_classes
            and torch.equal(labels, torch.arange(len(labels)) % info.num_classes)
        ):
            nrow = info.num_classes
        p = Path(path)
        return [save_grid(x, p if p.suffix == ".png" else p.with_suffix(".png"), nrow=nrow)]

    def demo(self, quick: bool) -> DemoRun:
        """Class-conditional handwritten digits at 16x16 (a shorter configs/image_digits.yaml)."""
        return DemoRun(
            "digits",
            "handwritten digits (16x16, 10 classes)",
            demo_config(
                "image",
                data={"source": "digits", "size": 16},
                model={"preset": "tiny", **({"channels": 16} if quick else {})},
                steps=30 if quick else 600,
                batch_size=64,
                num_samples=100,
                quick=quick,
            ),
            {
                "noising.png": "forward noising of training examples, t from 0 (left) to 1",
                "trajectory.png": "the sampler's x0 estimate along a denoising trajectory (last column: the sample)",
            },
        )

    def save_pictures(
        self, denoiser: Any, dataset: Any, info: DataInfo, out_dir: Path, *, guidance_scale: float = 1.0
    ) -> list[Path]:
        """A forward-noising strip of four training images and a denoising-trajectory strip."""
        from .pictures import noising_strip, trajectory_strip

        x0 = torch.stack([dataset[i][0] for i in range(min(4, len(dataset)))])
        out = Path(out_dir)
        return [
            noising_strip(x0, denoiser.schedule, out / "noising.png"),
            trajectory_strip(denoiser, info, out / "trajectory.png", guidance_scale=guidance_scale),
        ]

    def describe(self, data: ImageDataConfig) -> str:
        return f"images from {data.source}{' ' + data.path if data.path else ''} at {data.hw[0]}x{data.hw[1]}"

    reconstruction_help: ClassVar[dict[str, str]] = {
        "psnr": "peak signal-to-noise ratio per image, dB, peak-to-peak 2 ([-1, 1]); mean over images (higher is better)",
        "worst_psnr": "the lowest PSNR of any image",
    }

    def autoencoder_defaults(self, data: ImageDataConfig) -> dict[str, Any]:
        """LDM's first stage for images (Rombach et al. 2022, appendix G): L1 on pixels, KL weight
        1e-6, 4 latent channels; two downsamplings (f = 4) at these small sizes. No perceptual
        loss: LPIPS needs downloaded weights."""
        return {"l1": 1.0, "kl_weight": 1e-6, "latent_channels": 4, "channel_mult": [1, 2, 2], "factors": 2}

    def reconstruction_figures(
        self, x: Tensor, recon: Tensor, info: DataInfo, *, labels: Tensor | None = None
    ) -> dict[str, float]:
        """PSNR of each reconstruction against its image (pixels in [-1, 1]: peak-to-peak 2), mean and worst."""
        from multidiff.reconstruction import psnr

        p = psnr(recon.clamp(-1, 1), x, data_range=2.0)
        finite = p[torch.isfinite(p)]
        return {
            "psnr": float(finite.mean()) if len(finite) else float("inf"),
            "worst_psnr": float(p.min()),
        }

    def judge(self, data: ImageDataConfig, info: DataInfo, **kwargs: Any) -> Any:  # type: ignore[override]
        """A classifier trained on 80% of the images, and FID with option ``inception_weights`` (:mod:`.judge`)."""
        from .judge import image_judge

        return image_judge(self, data, info, **kwargs)

"""The image modality: data from real files, PNG output that opens, the 2D UNet presets, the plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_images
from PIL import Image

from modalities.image import ImageDataConfig, ImageModality, ImageModelConfig
from modalities.image import data as D
from modalities.image.adapter import PRESETS, build_unet
from modalities.image.io import make_grid, read_image, resize_center_crop, save_grid
from multidiff.modality import DataInfo
from multidiff.nn import count_parameters
from multidiff.registry import available_modalities, load_modality


def test_registered_through_the_entry_point() -> None:
    assert "image" in available_modalities()
    assert load_modality("image") is ImageModality


def test_digits_are_built_in_labelled_and_scaled() -> None:
    ds, info = D.digits((16, 16))
    assert len(ds) == 1797 and info.shape == (1, 16, 16) and info.num_classes == 10
    x, y = ds.x, ds.labels
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.9
    assert sorted(y.unique().tolist()) == list(range(10))
    # Ink is bright: the centre of a "0" is dark, its ring bright.
    zero = x[y == 0].mean(0)[0]
    assert zero[7:9, 7:9].mean() < zero[2:4, 6:10].mean()


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", {"cat": 3, "dog": 2})
    ds, info = D.image_folder(tmp_path / "imgs", (8, 6), channels=3)
    assert info.class_names == ("cat", "dog") and info.num_classes == 2 and info.shape == (3, 8, 6)
    assert ds.x.shape == (5, 3, 8, 6) and ds.labels.tolist() == [0, 0, 0, 1, 1]
    lazy, _ = D.image_folder(tmp_path / "imgs", (8, 6), channels=1, in_memory=False)
    x, y = lazy[4]
    assert x.shape == (1, 8, 6) and int(y) == 1


def test_folder_without_subfolders_is_unconditional(tmp_path: Path) -> None:
    write_images(tmp_path, {"": 3})
    _, info = D.image_folder(tmp_path, (4, 4))
    assert info.num_classes == 0


def test_read_image_is_exact_for_png(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert torch.allclose((x + 1) * 127.5, torch.from_numpy(arr).permute(2, 0, 1).float(), atol=1e-4)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        D.image_folder(tmp_path / "nowhere", (8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        D.image_folder(tmp_path / "empty", (8, 8))
    write_images(tmp_path / "imgs", {"a": 2})
    bad = tmp_path / "imgs" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    for in_memory in (True, False):
        with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
            D.image_folder(tmp_path / "imgs", (8, 8), in_memory=in_memory)


def test_torchvision_sets_need_the_download_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not in .*data.download=true"):
        D.torchvision_set("mnist", (28, 28), 1, root=tmp_path, download=False)


def test_resize_center_crop_keeps_aspect_and_centre() -> None:
    x = torch.zeros(1, 20, 40)
    x[:, :, 15:25] = 1  # a bright vertical band in the middle
    y = resize_center_crop(x, (10, 10))
    assert y.shape == (1, 10, 10)
    assert y[:, :, 4:6].mean() > 0.9 and y[:, :, :2].abs().max() < 1e-6


def test_grid_png_opens_with_one_class_per_column(tmp_path: Path) -> None:
    x = torch.linspace(-1, 1, 6).reshape(6, 1, 1, 1).expand(6, 1, 4, 4)
    grid = make_grid(x, nrow=3, pad=1)
    assert grid.shape == (1, 2 * 6, 3 * 6)
    p = save_grid(x, tmp_path / "g.png", nrow=3, scale=2)
    with Image.open(p) as im:
        assert im.size == (36, 24) and im.mode == "L"
    ad = ImageModality()
    labels = torch.arange(20) % 10
    out = ad.save_samples(torch.zeros(20, 3, 4, 4), tmp_path / "s", DataInfo((3, 4, 4), 10), labels=labels)
    with Image.open(out[0]) as im:
        assert out[0].suffix == ".png" and im.mode == "RGB"
        w, h = im.size
        assert w / h == pytest.approx(10 / 2)  # ten columns, two rows


def test_presets_and_attention_placement() -> None:
    info = DataInfo((3, 32, 32), 0)
    net = build_unet(ImageModelConfig(preset="ddpm_cifar10"), info)
    assert 35e6 < count_parameters(net) < 40e6  # DDPM's CIFAR-10 model has 35.7M
    attn = [n for n, m in net.named_modules() if type(m).__name__ == "Attention"]
    assert any(n.startswith("down.") for n in attn)
    tiny = build_unet(ImageModelConfig(preset="tiny"), DataInfo((1, 16, 16), 10))
    assert count_parameters(tiny) < 2e6
    assert set(PRESETS) == {"tiny", "small", "ddpm_cifar10", "dit_tiny"}
    cfg = ImageModelConfig(preset="tiny", channels=16)
    assert cfg.resolved()["channels"] == 16 and cfg.resolved()["channel_mult"] == PRESETS["tiny"]["channel_mult"]


def test_random_flip_flips_about_half_and_only_horizontally() -> None:
    ad = ImageModality()
    x = torch.arange(2 * 3 * 4.0).reshape(1, 2, 3, 4).expand(400, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    y = ad.augment(x, ImageDataConfig(random_flip=True), g)
    flipped = (y != x).flatten(1).any(1)
    assert torch.equal(y[flipped], x[flipped].flip(-1))
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(ad.augment(x, ImageDataConfig(), g), x)


def test_non_square_and_odd_images_train(tmp_path: Path) -> None:
    net = build_unet(
        ImageModelConfig(channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, head_channels=8), DataInfo((3, 13, 7), 2)
    )
    x = torch.randn(2, 3, 13, 7)
    out = net(x, torch.tensor([1.0, 500.0]), torch.tensor([0, 1]))
    assert out.shape == x.shape
    out.pow(2).mean().backward()

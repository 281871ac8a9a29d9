"""The voxel adapter: config sections, 3D UNet presets for occupancy / SDF grids, meshes out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from multidiff.modality import (
    DataInfo,
    Modality,
    PresetModelConfig,
    StrictModel,
    coin_flips,
    finish_dataset,
    sample_names,
)

__all__ = ["PRESETS", "VoxelModelConfig", "VoxelDataConfig", "VoxelModality", "build_unet3d"]

# 3D UNet presets. Every level halves all three axes (unlike guided-diffusion's 3D mode, which
# keeps the first); attention only where a grid has at most 8^3 = 512 positions.
# ``tiny``: 16^3 on a CPU: 2x2x2 patches folded into channels first (space-to-depth), so the
# network runs at 8^3 -> 4^3 -> 2^3 with 24-96 channels, 5x the parameters of an 8-channel
# net at 16^3 for 1.5x its speed; ``small``: 32^3; ``base``: 64^3 on a GPU,
# with gradient checkpointing, since 3D activations are what runs out of memory first.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "patch_size": 2,
        "channels": 24,
        "channel_mult": [1, 2, 4],
        "num_res_blocks": 1,
        "attention_levels": [1, 2],
        "dropout": 0.0,
        "gradient_checkpointing": False,
        "checkpoint_norms": False,
    },
    "small": {
        "patch_size": 1,
        "channels": 32,
        "channel_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attention_levels": [3],
        "dropout": 0.0,
        "gradient_checkpointing": False,
        "checkpoint_norms": True,
    },
    "base": {
        "patch_size": 1,
        "channels": 64,
        "channel_mult": [1, 2, 2, 4, 4],
        "num_res_blocks": 2,
        "attention_levels": [3, 4],
        "dropout": 0.1,
        "gradient_checkpointing": True,
        "checkpoint_norms": False,
    },
}


class VoxelModelConfig(PresetModelConfig):
    """The ``model:`` section: a preset, any of whose values may be overridden.

    ``gradient_checkpointing`` recomputes every level's activations in the backward pass: about
    half the memory for a sixth less speed. ``checkpoint_norms`` recomputes only each residual
    block's second normalisation and activation: 10-20% less memory for a few per cent of speed
    (on in ``small``, where it brings training memory below MONAI's; see benchmarks/README.md).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny", "small", "base"] = "tiny"
    attention_levels: list[int] | None = None
    patch_size: int | None = Field(None, ge=1)
    gradient_checkpointing: bool | None = None
    checkpoint_norms: bool | None = None


class VoxelDataConfig(StrictModel):
    """The ``data:`` section.

    ``source``: ``shapes`` (built in: parametric primitives, the class is the kind) or ``folder``
    (``path`` to OBJ/STL/PLY/OFF/GLB/GLTF meshes, classes from sub-folders). Meshes are centred,
    scaled to the unit cube and voxelized at ``resolution^3`` as ``occupancy`` (+1 inside, -1
    outside) or ``sdf`` (truncated signed distance, positive inside, ``truncation`` voxels mapped
    to +-1), cached in ``cache_dir`` (default ``~/.cache/multidiff/voxels``, or ``$MULTIDIFF_CACHE/voxels``)
    so only the first run voxelizes; the data folder is only read. Meshes with more than ``max_faces`` faces are refused with a message.
    ``random_flip`` mirrors grids along the last axis (keeps "up" up).
    """

    source: Literal["shapes", "folder"] = "shapes"
    path: str | None = None
    resolution: int = Field(16, ge=8, le=256)
    representation: Literal["occupancy", "sdf"] = "occupancy"
    truncation: float = Field(3.0, gt=0)
    per_class: int = Field(200, ge=1)
    class_conditional: bool = True
    cache_dir: str | None = None
    max_faces: int = Field(2_000_000, ge=1)
    random_flip: bool = False
    limit: int | None = Field(None, ge=1)
    # a file in a folder source that cannot be read: stop with its name (error) or leave it out (skip)
    on_bad_file: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _folder_needs_path(self) -> VoxelDataConfig:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs data.path, the folder of mesh files")
        return self


def build_unet3d(
    model: VoxelModelConfig, info: DataInfo, *, noise_scale: float = 1.0, learned_variance: bool = False
) -> nn.Module:
    """The 3D UNet of ``model`` for grids of ``info.shape = (channels, D, H, W)``: every level halves all three axes."""
    return model.build_unet(3, info, noise_scale=noise_scale, learned_variance=learned_variance, factor=2)


class VoxelModality(Modality):
    name: ClassVar[str] = "voxel"
    ModelConfig: ClassVar[type[StrictModel]] = VoxelModelConfig
    DataConfig: ClassVar[type[StrictModel]] = VoxelDataConfig

    def build_dataset(self, data: VoxelDataConfig) -> tuple[torch.utils.data.Dataset, DataInfo]:  # type: ignore[override]
        from . import data as D

        if data.source == "shapes":
            ds, info = D.shapes(
                data.resolution,
                per_class=data.per_class,
                representation=data.representation,
                truncation=data.truncation,
            )
        else:
            assert data.path is not None
            ds, info = D.mesh_folder(
                data.path,
                data.resolution,
                representation=data.representation,
                truncation=data.truncation,
                cache_dir=data.cache_dir,
                limit=data.limit,
                max_faces=data.max_faces,
                on_bad=data.on_bad_file,
            )
        return finish_dataset(ds, info, limit=data.limit, class_conditional=data.class_conditional)

    def build_network(
        self, model: VoxelModelConfig, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:  # type: ignore[override]
        return build_unet3d(model, info, noise_scale=noise_scale, learned_variance=learned_variance)

    def augment(self, x: Tensor, data: VoxelDataConfig, generator: torch.Generator) -> Tensor:  # type: ignore[override]
        """Mirror along the last axis when ``data.random_flip`` is set."""
        if not data.random_flip:
            return x
        return torch.where(coin_flips(x, generator), x.flip(-1), x)

    def save_samples(  # type: ignore[override]
        self,
        x: Tensor,
        path: Path,
        info: DataInfo,
        *,
        labels: Tensor | None = None,
        file_format: str = "obj",
        level: float = 0.0,
        smooth: int = 0,
    ) -> list[Path]:
        """One mesh per grid in the folder ``path`` (marching cubes at ``level``, largest
        component; named by index and class), the grids as ``grids.npz``, and ``preview.png``."""
        import numpy as np

        from .io import export_mesh, grid_to_mesh, save_voxel_preview

        folder = Path(path)
        folder = folder.with_suffix("") if folder.suffix else folder
        folder.mkdir(parents=True, exist_ok=True)
        names = sample_names(x.shape[0], info, labels)
        grids = x.detach().float().cpu()
        paths = []
        for i, n in enumerate(names):
            mesh = grid_to_mesh(grids[i], level=level, smooth=smooth)
            if len(mesh.faces):
                paths.append(export_mesh(mesh, folder / f"{n}.{file_format}", file_format))
        lab = labels.cpu().numpy() if labels is not None else np.full(len(names), -1)
        np.savez_compressed(folder / "grids.npz", grids=grids.numpy(), labels=lab)
        paths.append(folder / "grids.npz")
        titles = [n.split("_", 1)[-1] for n in names] if labels is not None else None
        paths.append(
            save_voxel_preview(grids[:32], folder / "preview.png", titles=titles[:32] if titles else None, level=level)
        )
        return paths

    def save_pictures(  # type: ignore[override]
        self, denoiser: Any, dataset: Any, info: DataInfo, out_dir: Path, *, guidance_scale: float = 1.0
    ) -> list[Path]:
        """A preview of training shapes (one of each class when labelled), to compare with samples."""
        from .io import save_voxel_preview

        n = min(max(info.num_classes, 8), len(dataset))
        items = [dataset[i] for i in range(n)]
        titles = [info.class_names[int(y)] for _, y in items] if info.class_names else None
        x = torch.stack([torch.as_tensor(v) for v, _ in items])
        return [save_voxel_preview(x, Path(out_dir) / "voxel_real_preview.png", titles=titles)]

    def describe(self, data: VoxelDataConfig) -> str:  # type: ignore[override]
        src = data.source + (f" {data.path}" if data.path else "")
        return f"voxels from {src}, {data.representation} at {data.resolution}^3"

"""The voxel adapter: config sections, 3D UNet presets for occupancy / SDF grids, meshes out."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
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
    example_rand,
    finish_dataset,
    input_file,
    sample_names,
)

from .data import MESH_SUFFIXES

GRID_SUFFIXES = (".npy", ".npz")

__all__ = ["PRESETS", "VoxelModelConfig", "VoxelDataConfig", "VoxelModality", "build_unet3d", "read_grid_input"]

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
    # a diffusion transformer (multidiff.transformer.DiT, adaLN-Zero; U-ViT long skips on request)
    # with 2x2x2 patches: 512 tokens at 16^3
    "dit_tiny": {**DIT_TINY, "patch_size": 2, "gradient_checkpointing": False},
}


class VoxelModelConfig(PresetModelConfig):
    """The ``model:`` section: a preset, any of whose values may be overridden.

    ``gradient_checkpointing`` recomputes every level's activations in the backward pass: about
    half the memory for a sixth less speed. ``checkpoint_norms`` recomputes only each residual
    block's second normalisation and activation: 10-20% less memory for a few per cent of speed
    (on in ``small``, where it brings training memory below MONAI's; see benchmarks/README.md).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny", "small", "base", "dit_tiny"] = "tiny"
    attention_levels: list[int] | None = None
    gradient_checkpointing: bool | None = None
    checkpoint_norms: bool | None = None


class VoxelDataConfig(DataConfig):
    """The ``data:`` section.

    ``source``: ``shapes`` (built in: parametric primitives, the class is the kind) or ``folder``
    (``path`` to OBJ/STL/PLY/OFF/GLB/GLTF meshes, classes from sub-folders). Meshes are centred,
    scaled to the unit cube and voxelized at ``resolution^3`` as ``occupancy`` (+1 inside, -1
    outside) or ``sdf`` (truncated signed distance, positive inside, ``truncation`` voxels mapped
    to +-1), cached in ``cache_dir`` (default ``~/.cache/multidiff/voxels``, or ``$MULTIDIFF_CACHE/voxels``)
    so only the first run voxelizes; the data folder is only read. Meshes with more than ``max_faces`` faces are refused with a message.
    ``random_flip`` mirrors grids along the last axis (keeps "up" up). ``random_symmetry`` applies
    one of the cube's 48 symmetries (a permutation of the three axes and a mirror of each), drawn per
    example: for data whose orientation is random anyway (built-in shapes at ``max_tilt: 180``, or
    meshes in arbitrary poses), it shows the network each shape in 48 poses it could have had. Both
    are refused with ``captions: true``, whose captions state position and orientation. ``max_tilt`` (built-in
    shapes only): how far, in degrees, a shape's own axis may tilt from the vertical; 180 (the
    default) is any orientation, uniform on SO(3); 0 keeps shapes upright and turns them about the
    vertical only, as in aligned mesh collections.
    """

    folder_files = "mesh files"

    source: Literal["shapes", "folder"] = "shapes"
    resolution: int = Field(16, ge=8, le=256)
    representation: Literal["occupancy", "sdf"] = "occupancy"
    truncation: float = Field(3.0, gt=0)
    per_class: int = Field(200, ge=1)
    max_tilt: float = Field(180.0, ge=0, le=180)
    cache_dir: str | None = None
    max_faces: int = Field(2_000_000, ge=1)
    random_flip: bool = False
    random_symmetry: bool = False

    @model_validator(mode="after")
    def _augmentation_keeps_captions_true(self) -> VoxelDataConfig:
        for key in ("random_flip", "random_symmetry"):
            if self.captions and getattr(self, key):
                raise PydanticCustomError(  # named as data.<key>
                    "augment_captions",
                    "{key} moves and turns shapes, whose position and orientation the captions state "
                    '("on the left", "lying flat"); turn it off with captions: true',
                    {"loc": (key,), "key": key},
                )
        return self


def cube_symmetries(x: Tensor, u: Tensor) -> Tensor:
    """Each grid of ``x (B, C, D, H, W)`` under one of the cube's 48 symmetries, chosen by its row
    of uniforms ``u (B, 4)``: ``u[:, 0]`` picks one of the 6 permutations of the three spatial axes,
    ``u[:, 1:]`` mirror each axis below 0.5. Every symmetry is equally likely when ``u`` is uniform."""
    if x.ndim != 5 or len(set(x.shape[2:])) != 1 or u.shape != (x.shape[0], 4):
        raise ValueError(
            f"cube_symmetries: need cubic grids x (B, C, R, R, R) and u (B, 4), got {tuple(x.shape)} and {tuple(u.shape)}"
        )
    perms = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
    which = (u[:, 0] * len(perms)).long().clamp(max=len(perms) - 1)
    out = x.clone()
    for i, p in enumerate(perms[1:], 1):
        rows = which == i
        if bool(rows.any()):
            out[rows] = x[rows].permute(0, 1, *(2 + a for a in p))
    for axis in range(3):
        flip = (u[:, 1 + axis] < 0.5).view(-1, 1, 1, 1, 1)
        out = torch.where(flip, out.flip(2 + axis), out)
    return out


def build_unet3d(
    model: VoxelModelConfig, info: DataInfo, *, noise_scale: float = 1.0, learned_variance: bool = False
) -> nn.Module:
    """The 3D network of ``model`` for grids of ``info.shape = (channels, D, H, W)``: a UNet whose
    every level halves all three axes, or a DiT (``model.backbone: dit``)."""
    return model.build_network(3, info, noise_scale=noise_scale, learned_variance=learned_variance, factor=2)


def _split_index(path: Path) -> tuple[Path, int | None]:
    """``grids.npz#3`` as ``(grids.npz, 3)``; any other path (or one that exists as written) as ``(path, None)``."""
    head, sep, tail = str(path).rpartition("#")
    if sep and tail.isdigit() and not Path(path).expanduser().exists():
        return Path(head), int(tail)
    return Path(path), None


def _sample_grids(path: Path) -> np.ndarray | None:
    """The batch ``(B, 1, R, R, R)`` of a ``.npz`` laid out as :meth:`VoxelModality.save_samples`
    writes it (arrays ``grids`` and ``labels``), or None for any other ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "grids" not in z.files:
                return None
            grids = z["grids"]
    except Exception as e:  # a corrupt zip, random bytes
        raise ValueError(f"cannot read grid {str(path)!r}: {type(e).__name__}: {e}") from None
    return grids if grids.ndim == 5 else None


def read_grid_input(path: Path, index: int | None, resolution: int) -> Tensor:
    """Grid ``index`` (default 0) of a file as ``(1, R, R, R)`` float32 at ``resolution``.

    A ``grids.npz`` from :meth:`VoxelModality.save_samples` gives its grid exactly as saved (a
    model's samples may overshoot [-1, 1] a little; only NaN and infinity are refused), so samples
    round-trip. Any other ``.npy``/``.npz`` holds one grid, read by :func:`~.io.read_grid` (values
    in [-1, 1], booleans as occupancy). Errors name the file: an index out of range, a grid of
    another resolution (both sizes)."""
    from .io import read_grid

    grids = _sample_grids(path) if path.suffix.lower() == ".npz" else None
    if grids is None:
        if index:
            raise ValueError(f"grid file {str(path)!r} holds one grid; #{index} is out of range (only #0)")
        return read_grid(path, resolution)
    i = 0 if index is None else index
    if not 0 <= i < len(grids):
        raise ValueError(
            f"grid file {str(path)!r} holds {len(grids)} grids; #{i} is out of range (0 to {len(grids) - 1})"
        )
    g = grids[i]
    if g.ndim != 4 or g.shape[0] != 1 or len(set(g.shape[1:])) != 1:
        raise ValueError(f"grid file {str(path)!r} holds grids of shape {g.shape}; expected (1, R, R, R)")
    if g.shape[-1] != resolution:
        raise ValueError(
            f"grid file {str(path)!r} is {g.shape[-1]}^3, expected {resolution}^3 (the model's resolution)"
        )
    if g.dtype == bool:
        g = np.where(g, 1.0, -1.0)
    if not np.issubdtype(g.dtype, np.number) or not np.isfinite(g).all():
        raise ValueError(f"grid file {str(path)!r} holds non-numeric, NaN or infinite values in grid #{i}")
    return torch.from_numpy(g.astype(np.float32))


def _as_representation(grid: Tensor, data: VoxelDataConfig, path: Path) -> Tensor:
    """An occupancy grid (only -1 and +1) given to an SDF model becomes the SDF
    (:func:`~.io.occupancy_to_sdf` at ``data.truncation``), with a warning; anything else is kept."""
    from .io import occupancy_to_sdf

    if data.representation != "sdf" or not bool(((grid == 1) | (grid == -1)).all()):
        return grid
    warnings.warn(
        f"grid {str(path)!r} holds only -1 and +1 (occupancy); converted to the model's truncated SDF "
        f"(truncation {data.truncation:g} voxels)",
        stacklevel=3,
    )
    return occupancy_to_sdf(grid, data.truncation)


class VoxelModality(Modality[VoxelModelConfig, VoxelDataConfig]):
    name: ClassVar[str] = "voxel"
    ModelConfig: ClassVar[type[StrictModel]] = VoxelModelConfig
    DataConfig: ClassVar[type[StrictModel]] = VoxelDataConfig
    input_suffixes: ClassVar[tuple[str, ...]] = MESH_SUFFIXES + GRID_SUFFIXES

    def build_dataset(self, data: VoxelDataConfig) -> tuple[torch.utils.data.Dataset, DataInfo]:
        from . import data as D

        if data.source == "shapes" and data.captions:
            if data.max_tilt != 180:
                raise ValueError(
                    "data.max_tilt: captioned shapes draw their own orientation (upright or lying); leave it out"
                )
            ds, info = D.captioned_shapes(
                data.resolution,
                per_class=data.per_class,
                representation=data.representation,
                truncation=data.truncation,
                split=data.split,
                caption_variants=data.caption_variants,
                caption_drop=data.caption_drop,
                caption_factors=data.caption_factors,
            )
        elif data.source == "shapes":
            ds, info = D.shapes(
                data.resolution,
                per_class=data.per_class,
                representation=data.representation,
                truncation=data.truncation,
                max_tilt=data.max_tilt,
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
                captions=data.captions,
            )
        return finish_dataset(ds, info, limit=data.limit, class_conditional=data.class_conditional)

    def build_network(
        self, model: VoxelModelConfig, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:
        return build_unet3d(model, info, noise_scale=noise_scale, learned_variance=learned_variance)

    def augment(self, x: Tensor, data: VoxelDataConfig, generator: torch.Generator) -> Tensor:
        """Mirror along the last axis when ``data.random_flip`` is set; one of the cube's 48
        symmetries per example when ``data.random_symmetry`` is (see :func:`cube_symmetries`)."""
        if data.random_flip:
            x = torch.where(coin_flips(x, generator), x.flip(-1), x)
        if data.random_symmetry:
            x = cube_symmetries(x, example_rand(x, generator, 4))
        return x

    def read_input(self, path: Path, info: DataInfo, data: VoxelDataConfig) -> Tensor:
        """A mesh or a grid file as ``info.shape = (1, R, R, R)``: values in [-1, 1], positive inside.

        A mesh (OBJ/STL/PLY/OFF/GLB/glTF) is voxelized as a folder source voxelizes it
        (:func:`~.io.voxelize_file`: centred, scaled to the cube less one voxel per side, in
        ``data.representation`` with ``data.truncation``; more than ``data.max_faces`` faces refused).
        A grid is a ``.npy`` of shape ``(R, R, R)`` or ``(1, R, R, R)``, or a ``.npz``: one grid, or
        the ``grids.npz`` :meth:`save_samples` writes, whose grid ``k`` is named ``grids.npz#k``
        (default 0) and comes back exactly as saved (see :func:`read_grid_input`). An occupancy
        grid given to an SDF model is converted, with a warning.
        """
        from .io import voxelize_file

        file, index = _split_index(Path(path))
        p = input_file(file, self.input_suffixes, "the 'voxel' modality")
        if index is not None and p.suffix.lower() != ".npz":
            raise ValueError(f"cannot read {str(path)!r}: '#{index}' picks a grid of a .npz file only")
        r = info.shape[-1]
        if p.suffix.lower() in GRID_SUFFIXES:
            return _as_representation(read_grid_input(p, index, r), data, p).contiguous()
        return voxelize_file(p, r, data.representation, data.truncation, max_faces=data.max_faces)

    def save_samples(
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

    def demo(self, quick: bool) -> DemoRun:
        """Primitive shapes at 16^3, the class is the kind of shape (a shorter configs/voxel_shapes.yaml)."""
        small = {"channels": 4, "channel_mult": [1, 2], "attention_levels": [1]}
        return DemoRun(
            "shapes",
            "primitive shapes (16^3 SDF grids, 6 kinds)",
            demo_config(
                "voxel",
                data={"source": "shapes", "resolution": 16, "representation": "sdf", "truncation": 2.0},
                model={"preset": "tiny", **(small if quick else {})},
                steps=10 if quick else 400,
                batch_size=16,
                num_samples=12,
                quick=quick,
            ),
            {
                "preview.png": "the sampled shapes (meshes below)",
                "voxel_real_preview.png": "training shapes, to compare",
            },
        )

    def save_pictures(
        self, denoiser: Any, dataset: Any, info: DataInfo, out_dir: Path, *, guidance_scale: float = 1.0
    ) -> list[Path]:
        """A preview of training shapes (one of each class when labelled), to compare with samples."""
        from .io import save_voxel_preview

        n = min(max(info.num_classes, 8), len(dataset))
        items = [dataset[i] for i in range(n)]
        titles = [info.class_names[int(y)] for _, y in items] if info.class_names else None
        x = torch.stack([torch.as_tensor(v) for v, _ in items])
        return [save_voxel_preview(x, Path(out_dir) / "voxel_real_preview.png", titles=titles)]

    reconstruction_help: ClassVar[dict[str, str]] = {
        "iou": "intersection over union of the inside (value > 0) of each reconstruction and its grid, mean (higher is better)",
        "worst_iou": "the lowest IoU of any grid",
        "chamfer": "Chamfer distance between surface points of each reconstruction's mesh and its grid's, mean "
        "(squared units of the unit cube; lower is better)",
        "chamfer_floor": "the same between two draws of surface points of each real grid's mesh: the floor",
        "empty_fraction": "reconstructions with nothing inside (left out of the Chamfer mean)",
    }

    def autoencoder_defaults(self, data: VoxelDataConfig) -> dict[str, Any]:
        """LDM's recipe on volumes (L1, KL weight 1e-6, f = 4, 4 latent channels; the first factor 2 as
        2^3 patches folded into channels, which a CPU affords at 32^3) plus the error near
        the surface weighted up (``surface``: the mean error within one voxel of the surface, added to
        the mean error over the grid, of which the surface is a few per cent): for an SDF, values
        below ``1 / truncation`` (one voxel); for occupancy, where a neighbour has the other sign."""
        band = 1.0 / data.truncation if data.representation == "sdf" else 0.5
        return {
            "l1": 1.0,
            "surface": 1.0,
            "surface_band": band,
            "kl_weight": 1e-6,
            "patch_size": 2,
            "channels": 16,
            "channel_mult": [1, 2],
            "factors": 2,
            "latent_channels": 4,
        }

    def reconstruction_figures(
        self, x: Tensor, recon: Tensor, info: DataInfo, *, labels: Tensor | None = None, n_points: int = 512
    ) -> dict[str, float]:
        """IoU of the inside (value > 0) and the Chamfer distance of the meshes (marching cubes at
        level 0, ``n_points`` surface points; :func:`~.metrics.chamfer_distance`), per grid, averaged;
        ``chamfer_floor`` is the Chamfer distance of two draws of points on the same real mesh, what
        a perfect reconstruction would score at this number of points."""
        from .io import grid_to_mesh
        from .metrics import chamfer_distance, surface_points

        a, b = x > 0, recon > 0
        dims = tuple(range(1, x.ndim))
        union = (a | b).sum(dims)
        iou = torch.where(union > 0, (a & b).sum(dims) / union.clamp(min=1), 1.0)  # both empty: alike
        chamfers, floors, empty = [], [], 0
        for g, r in zip(x, recon):
            real = grid_to_mesh(g)
            # independent draws (seeds 0 and 1) for the figure and its floor alike: the same seed on two
            # similar meshes draws similar points, which would score below the floor
            pg, pr = surface_points(real, n_points), surface_points(grid_to_mesh(r), n_points, seed=1)
            if len(pg):
                floors.append(chamfer_distance(pg, surface_points(real, n_points, seed=1)))
            if len(pr) == 0:
                empty += 1
                continue
            chamfers.append(chamfer_distance(pg, pr))
        return {
            "iou": float(iou.float().mean()),
            "worst_iou": float(iou.float().min()),
            "chamfer": float(np.mean(chamfers)) if chamfers else float("nan"),
            "chamfer_floor": float(np.mean(floors)) if floors else float("nan"),
            "empty_fraction": empty / len(x),
        }

    def describe(self, data: VoxelDataConfig) -> str:
        src = data.source + (f" {data.path}" if data.path else "")
        if data.source == "shapes" and data.max_tilt < 180:
            src += f" tilted at most {data.max_tilt:g} degrees"
        return f"voxels from {src}, {data.representation} at {data.resolution}^3"

    def judge(self, data: VoxelDataConfig, info: DataInfo, **kwargs: Any) -> Any:  # type: ignore[override]
        """A 3D classifier that never saw the run's shapes, and mesh figures (:mod:`.judge`)."""
        from .judge import voxel_judge

        return voxel_judge(self, data, info, **kwargs)

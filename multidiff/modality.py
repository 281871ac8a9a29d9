"""What a modality adapter tells the core, and the data description it returns.

An adapter is a small object, found by name through the entry-point group
``multidiff.modalities`` (see :mod:`multidiff.registry`). The training engine, the checkpoint
loader and the CLI talk to data only through it, so they never know whether they train on
images, waveforms or voxel grids.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn
from torch.utils.data import Dataset

from .distributed import current_rows

__all__ = [
    "DIT_TINY",
    "DataConfig",
    "DataInfo",
    "DataT",
    "DemoRun",
    "Modality",
    "ModelT",
    "PresetModelConfig",
    "StrictModel",
    "TensorDataset",
    "coin_flips",
    "demo_config",
    "example_rand",
    "read_each",
    "finish_dataset",
    "input_file",
    "mask_from_array",
    "read_npy",
    "sample_names",
    "scan_labelled_folder",
]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


BACKBONES = ("unet", "dit")
# ``model:`` keys every backbone takes; every other key belongs to one backbone (see
# :meth:`PresetModelConfig.backbone_keys`): DIT_KEYS to the transformer, the rest to the UNet
SHARED_KEYS = frozenset(
    {"preset", "backbone", "dropout", "self_condition", "patch_size", "gradient_checkpointing", "qk_norm"}
)
DIT_KEYS = frozenset({"width", "depth", "heads", "mlp_ratio", "long_skips"})


# The small diffusion transformer every built-in modality offers as its ``dit_tiny`` preset (with its
# own patch size): 128 wide, 6 blocks of 4 heads, no long skips.
DIT_TINY: dict[str, Any] = {
    "backbone": "dit",
    "width": 128,
    "depth": 6,
    "heads": 4,
    "mlp_ratio": 4.0,
    "long_skips": False,
    "dropout": 0.0,
}


class PresetModelConfig(StrictModel):
    """A ``model:`` section that names a preset, any of whose values may be overridden.

    A subclass sets ``PRESETS`` (name -> network arguments), narrows ``preset`` to a ``Literal``
    of those names and adds its own override fields, each ``None`` meaning "the preset's value".
    :meth:`resolved` returns the preset with every override applied.

    ``backbone`` picks the network: ``unet`` (:class:`multidiff.nn.UNet`) or ``dit``
    (:class:`multidiff.transformer.DiT`). A preset names its backbone with a ``"backbone"`` entry
    (``unet`` when it has none); ``backbone: dit`` without a ``preset`` takes the first ``dit``
    preset. A key of the other backbone (``channels`` with ``dit``, ``depth`` with ``unet``) is an
    error naming it, as is a backbone that contradicts the preset's.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    preset: str
    backbone: Literal["unet", "dit"] | None = None
    # UNet keys
    channels: int | None = Field(None, ge=1)
    channel_mult: list[int] | None = None
    num_res_blocks: int | None = Field(None, ge=1)
    head_channels: int | None = Field(None, ge=1)  # channels per attention head (64 when unset)
    # GroupNorm groups (the largest count up to this that divides each width; 32, as in DDPM, by default)
    groups: int | None = Field(None, ge=1)
    # each position's coordinates as extra input channels of the first convolution (CoordConv)
    coordinates: bool | None = None
    # DiT keys: token width, blocks, attention heads, MLP width over token width, U-ViT long skips
    width: int | None = Field(None, ge=2)
    depth: int | None = Field(None, ge=1)
    heads: int | None = Field(None, ge=1)
    mlp_ratio: float | None = Field(None, gt=0)
    long_skips: bool | None = None
    # both: dropout (UNet residual blocks, DiT MLPs), patch side (an int, or one per spatial axis:
    # UNet space-to-depth, DiT tokens)
    dropout: float | None = Field(None, ge=0, lt=1)
    patch_size: int | list[int] | None = None
    # self-conditioning (Chen et al. 2023, "Analog Bits", sec. 3.2): the network also sees its own
    # earlier x0 estimate; half of each training batch gets one (an extra no-grad forward on it),
    # and the samplers feed each step the previous step's estimate
    self_condition: bool = False
    # LayerNorm on every attention head's queries and keys (QK-norm, multidiff.nn.QKNorm): bounded
    # attention logits, for learning rates at which attention would otherwise collapse
    qk_norm: bool | None = None
    # UNet resampling between levels: "conv" (learned, DDPM's) or "box" (block means down, nearest
    # neighbours up: no parameters, EDM2's; keeps the residual stream's magnitude at high learning rates)
    resample: Literal["conv", "box"] | None = None
    # text conditioning (a run's ``text`` section): the UNet levels with cross-attention to the text
    # encoder's states (None: where self-attention is; the middle block always has one); the DiT
    # cross-attends in every block. The widths come from the encoder (:meth:`with_text`)
    cross_attention_levels: list[int] | None = None
    _text_dims: tuple[int, int] = PrivateAttr(default=(0, 0))

    @field_validator("channel_mult")
    @classmethod
    def _mult(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(m < 1 for m in v)):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {v}")
        return v

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: int | list[int] | None) -> int | list[int] | None:
        if v is not None and (v < 1 if isinstance(v, int) else not v or any(p < 1 for p in v)):
            raise ValueError(f"patch_size must be a positive int or a list of positive ints, one per axis, got {v}")
        return v

    @classmethod
    def backbone_keys(cls, backbone: str) -> set[str]:
        """The keys of this section that a ``backbone`` network takes (the shared ones included)."""
        fields = set(cls.model_fields)
        own = DIT_KEYS if backbone == "dit" else fields - DIT_KEYS - SHARED_KEYS
        return fields & (SHARED_KEYS | own)

    @classmethod
    def preset_backbone(cls, preset: str) -> str:
        return cls.PRESETS.get(preset, {}).get("backbone", "unet")

    @property
    def network_backbone(self) -> str:
        """The backbone this section builds: ``backbone`` if given, else the preset's."""
        return self.backbone or self.preset_backbone(self.preset)

    @model_validator(mode="before")
    @classmethod
    def _preset_of_backbone(cls, data: Any) -> Any:
        # ``backbone: dit`` alone means the first dit preset (the default preset is a UNet's)
        if isinstance(data, dict) and data.get("backbone") in BACKBONES and "preset" not in data:
            default = cls.model_fields["preset"].default
            fits = [p for p in cls.PRESETS if cls.preset_backbone(p) == data["backbone"]]
            if fits and not (isinstance(default, str) and cls.preset_backbone(default) == data["backbone"]):
                data = {**data, "preset": fits[0]}
        return data

    @model_validator(mode="after")
    def _keys_fit_backbone(self) -> PresetModelConfig:
        backbone, of_preset = self.network_backbone, self.preset_backbone(self.preset)
        if backbone != of_preset:
            fits = [p for p in self.PRESETS if self.preset_backbone(p) == backbone]
            hint = f"use a {backbone} preset ({', '.join(fits)})" if fits else f"this modality has no {backbone} preset"
            raise PydanticCustomError(  # named as model.backbone
                "backbone_preset",
                f"backbone {backbone!r} does not fit preset {self.preset!r}, a {of_preset} preset; {hint}",
                {"loc": ("backbone",)},
            )
        taken = self.backbone_keys(backbone)
        wrong = sorted(k for k in type(self).model_fields if k not in taken and getattr(self, k) is not None)
        if wrong:
            other = "unet" if backbone == "dit" else "dit"
            raise PydanticCustomError(  # named as model.<first key>
                "backbone_key",
                f"{', '.join(wrong)} {'is a key' if len(wrong) == 1 else 'are keys'} of the {other} backbone, "
                f"not of {backbone!r} (preset {self.preset!r}); its keys: {', '.join(sorted(taken - {'preset'}))}",
                {"loc": (wrong[0],)},
            )
        return self

    def resolved(self) -> dict[str, Any]:
        """The preset's network arguments (without its ``backbone``) with this section's overrides
        applied (``attention_levels``, when the preset has them, checked against the number of levels)."""
        out = {k: v for k, v in self.PRESETS[self.preset].items() if k != "backbone"}
        for k in type(self).model_fields:
            if k not in ("preset", "backbone") and getattr(self, k) is not None:
                out[k] = getattr(self, k)
        levels = len(out.get("channel_mult", ()))
        for key in ("attention_levels", "cross_attention_levels"):
            if any(not 0 <= a < levels for a in out.get(key) or ()):
                raise ValueError(f"model.{key} must lie in [0, {levels - 1}], got {out[key]}")
        return out

    def with_text(self, token_dim: int, pooled_dim: int) -> PresetModelConfig:
        """A copy whose network takes text: ``tokens`` of ``token_dim`` through cross-attention and
        a ``pooled`` vector of ``pooled_dim`` added to the noise embedding (a text encoder's widths;
        see :class:`multidiff.conditioning.TextConditionedNet`). Not a key of the section: the widths
        are the encoder's, not the user's."""
        out = self.model_copy()
        out._text_dims = (int(token_dim), int(pooled_dim))
        return out

    def _text_args(self) -> dict[str, int]:
        token_dim, pooled_dim = self._text_dims
        if not token_dim and self.cross_attention_levels is not None:
            raise ValueError("model.cross_attention_levels needs a text section (cross-attention to a text encoder)")
        return {"token_dim": token_dim, "pooled_dim": pooled_dim} if token_dim else {}

    def unet_args(self, info: DataInfo) -> dict[str, Any]:
        """The :class:`multidiff.nn.UNet` arguments of the resolved preset for examples of
        ``info.shape``: the preset's keys as they are. A subclass whose keys are not all UNet
        arguments (image sizes for attention) translates them here; every key must reach the UNet."""
        return self.resolved()

    def dit_args(self, info: DataInfo) -> dict[str, Any]:
        """The :class:`multidiff.transformer.DiT` arguments of the resolved preset for examples
        of ``info.shape``: the preset's keys as they are; every key must reach the DiT."""
        return self.resolved()

    def build_network(
        self, dims: int, info: DataInfo, *, noise_scale: float, learned_variance: bool = False, **unet_fixed: Any
    ) -> nn.Module:
        """The network of :attr:`network_backbone` over ``dims`` axes for examples of ``info.shape``:
        :meth:`build_unet` (given ``unet_fixed``, arguments an adapter fixes for its UNet) or
        :meth:`build_dit`. Both take ``net(x, c_noise, class_labels=None, self_cond=None)``."""
        if self.network_backbone == "dit":
            return self.build_dit(dims, info, noise_scale=noise_scale, learned_variance=learned_variance)
        return self.build_unet(dims, info, noise_scale=noise_scale, learned_variance=learned_variance, **unet_fixed)

    def build_unet(
        self, dims: int, info: DataInfo, *, noise_scale: float, learned_variance: bool = False, **fixed: Any
    ) -> nn.Module:
        """A :class:`multidiff.nn.UNet` over ``dims`` axes for examples of ``info.shape`` (channels
        first) from :meth:`unet_args` (so no preset key is left out: an unknown one is an error);
        ``fixed`` adds or overrides some."""
        from .nn import UNet

        if self.network_backbone != "unet":
            raise ValueError(f"model.backbone is {self.network_backbone!r}: build the network with build_network")
        args = {**self.unet_args(info), **self._text_args(), **fixed}
        return UNet(
            dims,
            info.shape[0],
            num_classes=info.num_classes,
            learned_variance=learned_variance,
            noise_scale=noise_scale,
            **args,
        )

    def build_dit(self, dims: int, info: DataInfo, *, noise_scale: float, learned_variance: bool = False) -> nn.Module:
        """A :class:`multidiff.transformer.DiT` over ``dims`` axes for examples of ``info.shape``
        from :meth:`dit_args` (every key reaches it; an unknown one is an error)."""
        from .transformer import DiT

        return DiT(
            dims,
            info.shape[0],
            num_classes=info.num_classes,
            learned_variance=learned_variance,
            noise_scale=noise_scale,
            **self.dit_args(info),
            **self._text_args(),
        )


class DataConfig(StrictModel):
    """The keys every modality's ``data:`` section shares; an adapter's section subclasses it and
    adds its ``source`` (a ``Literal`` that may include ``"folder"``) and its own keys.

    ``path``: the folder of a ``folder`` source (required then; ``folder_files`` names its files in
    the message); ``class_conditional``: use the data's classes; ``limit``: the first examples only;
    ``on_bad_file``: a file of a folder source that cannot be read stops the run with its name
    (``error``) or is left out with a warning (``skip``); ``captions``: the examples come with a
    caption each (text conditioning): a folder's from its ``metadata.jsonl`` or sidecar ``.txt``
    files (see :func:`multidiff.captions.read_captions`; a missing, empty or non-UTF-8 caption
    is a bad file), a built-in set's from the attributes it draws, where the modality has such a set;
    ``split``: which of a captioned built-in set's examples: ``train`` (the default) leaves out
    every example of the attribute combinations the set holds out (so a model can be judged on
    combinations it never saw), ``held_out`` keeps only those, ``all`` keeps both.

    ``caption_variants`` (a captioned built-in set): that many more captions of each example, from
    fresh templates and synonyms; training shows each example with one of its captions, drawn
    anew every step. ``caption_drop``: the probability that an attribute other than the class (the
    digit, the pitch, the kind) is left unsaid in a variant, so some captions are partial ("a bright
    tone at E4"; see :func:`multidiff.captions.caption_variants`). ``caption_factors``: each
    example also gets one caption per factor of its attributes, saying only that factor ("a small
    shape", "a cone lying on its side"), so the model learns each factor's conditional and a prompt
    can be composed of parts ("a small shape AND a cone lying on its side", composable guidance:
    :func:`multidiff.captions.factor_captions`). Prompts and the run's example captions stay the
    full captions.
    """

    folder_files: ClassVar[str] = "files"

    path: str | None = None
    class_conditional: bool = True
    limit: int | None = Field(None, ge=1)
    on_bad_file: Literal["error", "skip"] = "error"
    captions: bool = False
    split: Literal["train", "held_out", "all"] = "train"
    caption_variants: int = Field(0, ge=0, le=64)
    caption_drop: float = Field(0.0, ge=0.0, lt=1.0)
    caption_factors: bool = False

    @model_validator(mode="after")
    def _variants_need_builtin_captions(self) -> DataConfig:
        for key in ("caption_variants", "caption_drop", "caption_factors"):
            if getattr(self, key) and (not self.captions or getattr(self, "source", None) == "folder"):
                raise PydanticCustomError(  # named as data.<key>
                    "variants_captions",
                    f"{key} composes more captions from a captioned built-in set's attributes; it needs "
                    "captions: true and a built-in source (a folder's captions are the files')",
                    {"loc": (key,)},
                )
        if self.caption_drop and not self.caption_variants:
            raise PydanticCustomError(
                "drop_variants",
                "caption_drop leaves attributes out of the extra captions; set caption_variants >= 1 too",
                {"loc": ("caption_drop",)},
            )
        return self

    @model_validator(mode="after")
    def _split_needs_captions(self) -> DataConfig:
        if self.split != "train" and (not self.captions or getattr(self, "source", None) == "folder"):
            raise PydanticCustomError(  # named as data.split
                "split_captions",
                f"split {self.split!r} picks attribute combinations of a captioned built-in set; it needs "
                "captions: true and a built-in source",
                {"loc": ("split",)},
            )
        return self

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataConfig:
        if getattr(self, "source", None) == "folder" and not self.path:
            raise PydanticCustomError(  # named as data.path
                "folder_path", f"source 'folder' needs data.path, the folder of {self.folder_files}", {"loc": ("path",)}
            )
        return self


@dataclass(frozen=True)
class DataInfo:
    """What the network and the sampler need to know about one example.

    Attributes:
        shape: ``(C, *spatial)`` of one example, as the network sees it.
        num_classes: number of class labels (0: unconditional data).
        class_names: a name per class, for pictures and the CLI.
        extra: anything else an adapter wants to keep with a checkpoint (a sample rate), JSON-able.
    """

    shape: tuple[int, ...]
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataInfo:
        return cls(tuple(d["shape"]), int(d["num_classes"]), tuple(d.get("class_names", ())), dict(d.get("extra", {})))


def scan_labelled_folder(
    path: str | Path, suffixes: Sequence[str], what: str
) -> tuple[list[Path], list[int], list[str]]:
    """Files with one of ``suffixes`` under ``path``, labelled by their first-level sub-folder.

    Files directly in ``path`` make an unlabelled set (labels -1, no classes); sub-folders
    ``path/<class>/...`` (any depth below) make one class each, in sorted order. Mixing both is an
    error, as are a missing folder and a folder with no such files; every message names the folder.
    Hidden files and folders (``.x``, macOS ``._x.wav``) are skipped. ``what`` names the files
    in messages ("images", "audio files").
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder")
    wanted = {s.lower() for s in suffixes}
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in wanted and p.is_file() and not any(q.startswith(".") for q in p.relative_to(root).parts)
    )
    if not files:
        raise ValueError(f"data folder {str(root)!r} holds no {what} ({', '.join(suffixes)})")
    top = [p for p in files if p.parent == root]
    if top and len(top) != len(files):
        raise ValueError(
            f"data folder {str(root)!r} mixes {what} at the top level ({top[0].name}) with class sub-folders; "
            "put every file in a class folder, or none"
        )
    if top:
        return files, [-1] * len(files), []
    classes = sorted({p.relative_to(root).parts[0] for p in files})
    index = {c: i for i, c in enumerate(classes)}
    return files, [index[p.relative_to(root).parts[0]] for p in files], classes


class TensorDataset(Dataset):
    """Examples held in memory: ``x (N, C, *spatial)`` and optional ``labels (N,)``.

    Items are ``(x, label)`` with label ``-1`` when unlabelled. ``__getitems__`` fetches a whole
    batch with one index operation, which the DataLoader uses instead of collating items.
    """

    def __init__(self, x: Tensor, labels: Tensor | None = None) -> None:
        if labels is not None and labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        self.x = x
        self.labels = labels if labels is not None else torch.full((x.shape[0],), -1, dtype=torch.long)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.labels[i]

    def __getitems__(self, idx: Sequence[int]) -> tuple[Tensor, Tensor]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return self.x[i], self.labels[i]

    def subset(self, idx: Sequence[int] | Tensor) -> TensorDataset:
        """The examples ``idx``, in that order (a subclass keeps what it holds per example)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return TensorDataset(self.x[i], self.labels[i])


ModelT = TypeVar("ModelT", bound=StrictModel)
DataT = TypeVar("DataT", bound=StrictModel)


class Modality(ABC, Generic[ModelT, DataT]):
    """The adapter interface; subclass it and register the class under ``multidiff.modalities``.

    It is generic in the types of its validated ``model`` and ``data`` sections, so an adapter's
    methods take its own config types: ``class ImageModality(Modality[ImageModelConfig,
    ImageDataConfig])`` with ``ModelConfig = ImageModelConfig`` and ``DataConfig = ImageDataConfig``.

    A subclass must implement :meth:`build_dataset`, :meth:`build_network` and
    :meth:`save_samples`; :meth:`augment`, :meth:`save_pictures`, :meth:`save_noising`,
    :meth:`describe`, :meth:`read_input` and :meth:`read_mask` have defaults.

    Class attributes:
        name: the modality's name in configs (``modality: image``).
        ModelConfig: pydantic model of the ``model:`` section.
        DataConfig: pydantic model of the ``data:`` section.
        input_suffixes: the file kinds :meth:`read_input` accepts (``(".png", ".jpg")``); none by default.
        mask_suffixes: the file kinds :meth:`read_mask` accepts; ``.npy`` by default.
        diffusers_classes: the diffusers model classes (``"UNet2DModel"``) whose samples are this
            modality's data: a diffusers folder of such a model is read as this modality
            (:mod:`multidiff.interop.diffusers`); none by default.
    """

    name: ClassVar[str] = ""
    ModelConfig: ClassVar[type[StrictModel]] = StrictModel
    DataConfig: ClassVar[type[StrictModel]] = StrictModel
    input_suffixes: ClassVar[tuple[str, ...]] = ()
    mask_suffixes: ClassVar[tuple[str, ...]] = (".npy",)
    diffusers_classes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build_dataset(self, data: DataT) -> tuple[Dataset, DataInfo]:
        """The training set for a validated ``data`` section; items are ``(x, label)``, label -1 if none.

        Must raise ``ValueError`` naming the path for a missing folder or an unreadable file.
        """

    @abstractmethod
    def build_network(
        self, model: ModelT, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:
        """The network ``net(x, c_noise, class_labels=None)`` for examples of ``info.shape``."""

    def augment(self, x: Tensor, data: DataT, generator: torch.Generator) -> Tensor:
        """Random augmentation of a training batch (in the training process, from ``generator``)."""
        return x

    @abstractmethod
    def save_samples(self, x: Tensor, path: Path, info: DataInfo, *, labels: Tensor | None = None) -> list[Path]:
        """Write generated examples ``(B, *info.shape)`` in [-1, 1] as files a user can open; return them."""

    def save_pictures(
        self, denoiser: Any, dataset: Dataset, info: DataInfo, out_dir: Path, *, guidance_scale: float = 1.0
    ) -> list[Path]:
        """Pictures of the process for this kind of data (noising, trajectories); none by default."""
        return []

    def save_noising(self, x: Tensor, path: Path, info: DataInfo, *, levels: Sequence[str]) -> list[Path]:
        """Write one example's forward noising, ``x (L, *info.shape)`` at the ``L`` noise levels named
        by ``levels`` (``"t=0.43"``), as files a user can open, with at least one PNG; return them.

        By default :meth:`save_samples` writes the copies as samples of ``L`` classes named by the
        levels, so an adapter whose pictures show a title or a column per class labels every level.
        """
        named = DataInfo(info.shape, len(levels), tuple(levels), info.extra)
        return self.save_samples(x, path, named, labels=torch.arange(len(levels)))

    def describe(self, data: DataT) -> str:
        """One line saying what the data is, for logs."""
        return self.name

    def read_input(self, path: Path, info: DataInfo, data: DataT) -> Tensor:
        """One example from a user's file (the start of an edit): a float32 tensor of shape
        ``info.shape`` in the units the training set (:meth:`build_dataset`) produced and
        :meth:`save_samples` takes, prepared the way the training data was (``data`` is the run's
        validated data section).

        Raises ``ValueError`` naming the file when it is missing, unreadable or another kind of
        data (saying which of :attr:`input_suffixes` this modality reads). The default reads nothing.
        """
        raise ValueError(
            f"the {self.name!r} modality cannot read input files (its adapter does not implement read_input); "
            f"got {str(path)!r}"
        )

    def read_mask(self, path: Path, info: DataInfo) -> Tensor:
        """A mask for masked generation (inpainting) from a file: bool, shape ``(1, *spatial)`` or
        ``info.shape`` (broadcastable to ``info.shape``), True where new content is generated.

        The default reads ``.npy`` arrays (nonzero: generate) of shape ``info.shape[1:]`` (given a
        leading axis of one), ``(1, *spatial)`` or ``info.shape``; any other file, or a wrong shape,
        raises ``ValueError`` naming the file (and both shapes).
        """
        p = input_file(path, self.mask_suffixes, f"the {self.name!r} modality's masks")
        return mask_from_array(read_npy(p, "mask"), p, info)

    def demo(self, quick: bool) -> DemoRun | None:
        """This modality's part of ``multidiff demo``: a small run on built-in data (see
        :func:`demo_config`), or ``None`` (the default) to take no part."""
        return None

    # a line per figure :meth:`reconstruction_figures` adds, for ``multidiff eval``'s table
    reconstruction_help: ClassVar[dict[str, str]] = {}

    def autoencoder_defaults(self, data: DataT) -> dict[str, Any]:
        """The ``autoencoder:`` keys a ``task: autoencoder`` run on this data takes when the run
        does not give them (see :class:`multidiff.config.AutoencoderConfig`): which reconstruction
        losses the data wants (an ``stft`` weight for waveforms, a ``surface`` weight for SDF
        grids), the downsampling ``factors`` and widths that suit its sizes, the ``kl_weight``.
        None by default: the generic L1 autoencoder, factor 2 per level on every axis."""
        return {}

    def reconstruction_figures(
        self, x: Tensor, recon: Tensor, info: DataInfo, *, labels: Tensor | None = None
    ) -> dict[str, float]:
        """This modality's figures of reconstructions ``recon`` of real examples ``x`` (both
        ``(N, *info.shape)`` in data units, on the CPU; ``labels`` their classes, if labelled), for
        ``multidiff eval`` of an autoencoder run (:func:`multidiff.autoencoder.evaluate_reconstructions`),
        which itself reports the RMSE and mean absolute error. None by default; name each in
        :attr:`reconstruction_help`."""
        return {}

    def judge(
        self, data: Any, info: DataInfo, *, cache_dir: Path | str | None = None, device: Any = None, **options: Any
    ) -> Any:
        """A :class:`~multidiff.evaluate.Judge` of samples of a run whose validated data section is
        ``data``: something that does not depend on the model, with held-out real examples as its
        reference (``multidiff eval``, :func:`multidiff.evaluate.evaluate_run`).

        The default is the generic one (:func:`multidiff.evaluate.held_out_judge`): a small
        classifier over the data's rank trained on 80% of :meth:`build_dataset`'s labelled examples
        (cached under ``cache_dir``, on ``device``), reporting class accuracy and the Fréchet
        distance of its features to the other 20%. ``options``: ``epochs`` (default 10). Unlabelled
        data raise ``ValueError``; an adapter with better judges (pitch, meshes) overrides this.
        """
        from .evaluate import held_out_judge, real_examples

        unknown = sorted(set(options) - {"epochs"})
        if unknown:
            raise ValueError(f"the {self.name!r} modality's judge takes the option epochs, not {', '.join(unknown)}")
        x, y = real_examples(self.build_dataset(data)[0])
        extra = {"epochs": int(options["epochs"])} if "epochs" in options else {}
        tag = f"quality:{self.name}:{self.describe(data)}"  # the tag benchmarks/quality.py has always used
        return held_out_judge(x, y, tag=tag, cache_dir=cache_dir, device=device, **extra)


@dataclass(frozen=True)
class DemoRun:
    """One run of ``multidiff demo``, offered by a modality (:meth:`Modality.demo`).

    Attributes:
        name: short name of the data (``digits``): the run folder is ``<out>/<name>_run``.
        title: what is trained, for the page and the log (``handwritten digits (16x16, 10 classes)``).
        config: the run config, without ``out_dir`` (the demo sets it), e.g. from :func:`demo_config`.
        captions: a caption per file name for the pictures :meth:`Modality.save_pictures` writes.
    """

    name: str
    title: str
    config: dict[str, Any]
    captions: dict[str, str] = field(default_factory=dict)


def demo_config(
    modality: str,
    *,
    data: dict[str, Any],
    model: dict[str, Any],
    steps: int,
    batch_size: int,
    num_samples: int,
    quick: bool,
    diffusion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The demo's recipe around a modality's ``data`` and ``model`` sections: v-prediction on the
    cosine table with the SNR+1 weighting, AdamW at 1e-3 with a cosine decay, EMA 0.999, and
    DPM-Solver++(2M) samples at guidance 2 (5 steps with ``quick``, else 20)."""
    return {
        "modality": modality,
        "data": data,
        "model": model,
        "diffusion": {
            "schedule": {"kind": "cosine_discrete"},
            "parameterization": "v",
            "weighting": "snr_plus_one",
            **(diffusion or {}),
        },
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": 1e-3,
            "warmup_steps": min(100, steps // 10),
            "lr_schedule": "cosine",
            "ema_decay": 0.999,
            "log_every": max(1, min(50, steps // 10)),
            "checkpoint_every": 0,
            "progress": not quick,
        },
        "sample": {
            "sampler": "dpmpp_2m",
            "steps": 5 if quick else 20,
            "guidance_scale": 2.0,
            "num_samples": num_samples,
        },
    }


def finish_dataset(
    ds: Dataset, info: DataInfo, *, limit: int | None, class_conditional: bool
) -> tuple[Dataset, DataInfo]:
    """The first ``limit`` examples of an in-memory set, and no classes when ``class_conditional`` is off."""
    if limit is not None and isinstance(ds, TensorDataset) and len(ds) > limit:
        ds = ds.subset(range(limit))
    if not class_conditional and info.num_classes:
        info = DataInfo(info.shape, 0, (), info.extra)
    return ds, info


BAD_FILE_POLICIES = ("error", "skip")


def read_each(
    files: Sequence[Path], labels: Sequence[int], read: Any, *, on_bad: str = "error", what: str = "files"
) -> tuple[list[Any], list[int], list[Path]]:
    """``read(f)`` for every file, in order, with the data section's ``on_bad_file`` policy.

    A file the reader refuses (it raises ``ValueError`` or ``OSError``, naming the file) stops
    everything under ``"error"``, the default. Under ``"skip"`` it is left out, and the count and
    the first names are reported in one warning. Files are only read, never modified.
    Returns ``(items, labels, skipped files)``.
    """
    if on_bad not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {list(BAD_FILE_POLICIES)}, got {on_bad!r}")
    items: list[Any] = []
    kept: list[int] = []
    bad: list[Path] = []
    for f, y in zip(files, labels):
        try:
            items.append(read(f))
        except (ValueError, OSError) as e:
            if on_bad == "error":
                raise ValueError(f"{e} (data.on_bad_file: skip leaves such files out)") from None
            bad.append(Path(f))
            continue
        kept.append(y)
    if bad:
        names = ", ".join(repr(str(p)) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} of {len(files)} {what} that could not be read: {names}", stacklevel=2)
    if not items:
        raise ValueError(f"none of the {len(files)} {what} could be read")
    return items, kept, bad


def example_rand(x: Tensor, generator: torch.Generator, *shape: int) -> Tensor:
    """Uniform draws ``(B, *shape)`` in [0, 1), one row per example of the batch ``x``, from
    ``generator`` (on its own device), on ``x``'s device. Use it for per-example augmentation: under
    data-parallel training the rows are those a single process would draw for the same examples of
    the global batch (:func:`multidiff.distributed.global_rows`), so results do not depend on the
    number of processes."""
    rows = current_rows(x.shape[0])
    return rows.draw(torch.rand, shape, generator).to(x.device)


def coin_flips(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """A per-example boolean mask, shaped ``(B, 1, ..., 1)`` to broadcast against ``x``, true with
    probability ``p``; drawn with :func:`example_rand` for reproducible augmentation."""
    return (example_rand(x, generator) < p).view(-1, *([1] * (x.ndim - 1)))


def input_file(path: str | Path, suffixes: Sequence[str], what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be an existing file with one of
    ``suffixes`` (any case); else ``ValueError`` naming the file and, for another kind of file,
    ``what`` reads which suffixes (``what``: "the 'image' modality")."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"input file {str(p)!r} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    if p.suffix.lower() not in {s.lower() for s in suffixes}:
        kind = f"a {p.suffix} file" if p.suffix else "a file without a suffix"
        raise ValueError(f"cannot read {str(p)!r}: it is {kind}, and {what} reads {', '.join(suffixes) or 'no files'}")
    return p


def read_npy(path: Path, what: str = "array") -> Any:
    """The array in a ``.npy`` file (numbers or booleans; never unpickled), or ``ValueError`` naming it."""
    import numpy as np

    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # a corrupt header, a pickled object array, random bytes
        raise ValueError(f"cannot read {what} {str(path)!r}: {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray) or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{what} {str(path)!r} holds {getattr(arr, 'dtype', type(arr).__name__)}, expected numbers")
    return arr


def mask_from_array(arr: Any, path: Path, info: DataInfo) -> Tensor:
    """A bool mask (nonzero: True) of shape ``(1, *spatial)`` or ``info.shape`` from an array of
    shape ``info.shape[1:]``, ``(1, *spatial)`` or ``info.shape``; ``ValueError`` naming ``path``
    and both shapes otherwise, or when it holds NaN or infinity."""
    import numpy as np

    spatial = tuple(info.shape[1:])
    shape = tuple(arr.shape)
    if shape not in (spatial, (1, *spatial), tuple(info.shape)):
        raise ValueError(
            f"mask {str(path)!r} has shape {shape}; expected {spatial}, {(1, *spatial)} or {tuple(info.shape)} "
            f"for examples of shape {tuple(info.shape)}"
        )
    if arr.dtype != bool and not np.isfinite(arr).all():
        raise ValueError(f"mask {str(path)!r} holds NaN or infinite values")
    mask = torch.from_numpy(np.asarray(arr != 0))
    return mask[None] if shape == spatial else mask


def sample_names(n: int, info: DataInfo, labels: Tensor | None) -> list[str]:
    """File stems for ``n`` generated examples: ``000``, ``001``, ... followed by ``_<class>`` when labelled."""
    named = labels is not None and bool(info.class_names)
    return [f"{i:03d}" + (f"_{info.class_names[int(labels[i])]}" if named else "") for i in range(n)]

"""Standard FID (Heusel et al. 2017) on Inception-v3 pool features, when the user has the weights.

Nothing is downloaded unless asked: pass ``weights=`` a local file of torchvision's
``inception_v3`` ImageNet state dict, or ``download=True`` to fetch torchvision's
``IMAGENET1K_V1`` weights once. Note that torchvision's Inception is not the TensorFlow graph
of the original FID code, so numbers compare across runs with the same weights, not with
published tables computed by pytorch-fid or the TF implementation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multidiff.metrics import frechet_distance_features

__all__ = ["inception_network", "inception_features", "fid"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def inception_network(weights: str | Path | None = None, *, download: bool = False) -> nn.Module:
    """Inception-v3 with its classifier removed: ``(B, 3, 299, 299) -> (B, 2048)`` pool features."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise ValueError(f"Inception weights {str(p)!r} do not exist")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read Inception weights {str(p)!r}: {e}") from None
    elif download:
        try:
            state = Inception_V3_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except OSError as e:
            raise ValueError(f"could not download the Inception-v3 weights (offline?): {e}") from None
    else:
        raise ValueError("FID needs Inception-v3 weights: pass a local file, or allow the download")
    net.load_state_dict(state)
    net.fc = nn.Identity()
    net.AuxLogits = None
    net.aux_logits = False
    return net.eval().requires_grad_(False)


@torch.no_grad()
def inception_features(net: nn.Module, x: Tensor, *, batch_size: int = 64) -> Tensor:
    """Pool features ``(N, 2048)`` of images ``(N, 1 or 3, H, W)`` in [-1, 1] (resized to 299, ImageNet-normalised)."""
    device = next(net.parameters()).device
    mean = torch.tensor(_MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(_STD, device=device).reshape(1, 3, 1, 1)
    out = []
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size].to(device).float()
        if b.shape[1] == 1:
            b = b.expand(-1, 3, -1, -1)
        b = F.interpolate((b + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(net((b - mean) / std).double().cpu())
    return torch.cat(out)


def fid(samples: Tensor, reference: Tensor, net: nn.Module, *, batch_size: int = 64) -> float:
    """FID between two image sets in [-1, 1] under ``net`` (see :func:`inception_network`)."""
    return frechet_distance_features(
        inception_features(net, samples, batch_size=batch_size),
        inception_features(net, reference, batch_size=batch_size),
    )

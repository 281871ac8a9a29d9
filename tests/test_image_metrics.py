"""Image metrics: standard FID with user-supplied Inception weights, and class-conditional scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modalities.image.fid import fid, inception_features, inception_network
from multidiff.metrics import frechet_distance_features


def test_fid_needs_weights_and_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs Inception-v3 weights"):
        inception_network()
    with pytest.raises(ValueError, match="nope.pth"):
        inception_network(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match=r"cannot read Inception weights .*junk\.pth"):
        inception_network(tmp_path / "junk.pth")


def test_fid_with_local_weights(tmp_path: Path) -> None:
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), tmp_path / "w.pth")
    net = inception_network(tmp_path / "w.pth")
    a = torch.rand(3, 1, 16, 16) * 2 - 1
    f = inception_features(net, a, batch_size=2)
    assert f.shape == (3, 2048) and torch.isfinite(f).all()
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, -a.flip(-1), net) > 0

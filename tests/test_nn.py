"""The rank-generic blocks and UNet: one class for 1D, 2D and 3D, any size, conditioning that matters."""

from __future__ import annotations

import math

import pytest
import torch

from multidiff.nn import Attention, Downsample, NoiseEmbedding, ResBlock, UNet, Upsample, conv_nd, count_parameters

# dims -> a non-square, partly odd per-sample shape (C, *spatial)
SHAPES = {1: (2, 37), 2: (3, 12, 9), 3: (1, 6, 8, 5)}


def small_unet(dims: int, channels: int, **kw) -> UNet:
    return UNet(
        dims, channels, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8, **kw
    )


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unet_trains_a_step_on_every_rank(dims: int) -> None:
    torch.manual_seed(0)
    c, *spatial = SHAPES[dims]
    net = small_unet(dims, c, num_classes=3)
    x = torch.randn(4, c, *spatial)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        out = net(x, torch.tensor([0.0, 10.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 3]))
        assert out.shape == x.shape
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_one_implementation_for_every_rank() -> None:
    """The blocks are the same classes at every rank; only the conv class differs."""
    nets = {d: small_unet(d, 2) for d in (1, 2, 3)}
    kinds = {
        d: sorted({type(m).__name__ for m in n.modules()} - {"Conv1d", "Conv2d", "Conv3d"}) for d, n in nets.items()
    }
    assert kinds[1] == kinds[2] == kinds[3]
    # Parameter counts differ only through kernel volumes: 1x1 layers and linears are identical.
    assert count_parameters(nets[1]) < count_parameters(nets[2]) < count_parameters(nets[3])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_resampling_halves_and_doubles_every_axis(dims: int) -> None:
    x = torch.randn(2, 4, *([8] * dims))
    assert Downsample(dims, 4)(x).shape[2:] == (4,) * dims
    assert Upsample(dims, 4)(x).shape[2:] == (16,) * dims


def test_resampling_by_axis() -> None:
    x = torch.randn(2, 4, 8, 12)
    assert Downsample(2, 4, (1, 2))(x).shape == (2, 4, 8, 6)
    assert Upsample(2, 4, (1, 4))(x).shape == (2, 4, 8, 48)
    with pytest.raises(ValueError, match="resampling factor"):
        Downsample(2, 4, (2, 2, 2))


def test_unet_with_axis_factors_on_a_long_signal() -> None:
    net = UNet(
        1, 1, channels=8, channel_mult=(1, 1, 2), num_res_blocks=1, attention_levels=(2,), factor=4, head_channels=8
    )
    x = torch.randn(2, 1, 1000)
    assert net(x, torch.zeros(2)).shape == x.shape


def test_attention_mixes_positions_and_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    att = Attention(8, head_channels=4)
    torch.nn.init.normal_(att.proj.weight)  # the output projection starts at zero
    x = torch.randn(2, 8, 5, 3)
    y = att(x)
    # Changing one position changes the output at another.
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    assert not torch.allclose(att(x2)[:, :, 4, 2], y[:, :, 4, 2])
    # Attention has no notion of position: permuting positions permutes the output.
    perm = torch.randperm(15)
    xf = x.flatten(2)[:, :, perm].reshape_as(x)
    assert torch.allclose(att(xf).flatten(2), y.flatten(2)[:, :, perm], atol=1e-5)


def test_zero_initialised_branches_start_as_identity() -> None:
    blk = ResBlock(2, 6, 6, 12)
    x = torch.randn(3, 6, 4, 4)
    assert torch.equal(blk(x, torch.randn(3, 12)), x)
    net = small_unet(2, 3)
    assert torch.count_nonzero(net(torch.randn(2, 3, 8, 8), torch.zeros(2))) == 0


def test_noise_and_class_conditioning_change_the_output() -> None:
    torch.manual_seed(0)
    net = small_unet(2, 1, num_classes=4)
    for p in net.parameters():  # move away from the zero init so the output depends on everything
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([10.0, 900.0]), torch.tensor([1, 1]))
    assert not torch.allclose(out[0], out[1])
    out = net(x, torch.tensor([10.0, 10.0]), torch.tensor([1, 2]))
    assert not torch.allclose(out[0], out[1])
    # No labels means the null class (index num_classes).
    assert torch.allclose(net(x, torch.zeros(2)), net(x, torch.zeros(2), torch.tensor([4, 4])))


def test_noise_embedding_separates_nearby_timesteps() -> None:
    emb = NoiseEmbedding(32, 32)
    a, b = emb(torch.tensor([500.0, 501.0])).detach()
    assert (a - b).abs().max() > 1e-4


def test_errors_name_what_is_wrong() -> None:
    net = small_unet(2, 3)
    with pytest.raises(ValueError, match="2 spatial axes"):
        net(torch.randn(2, 3, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        net(torch.randn(2, 4, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        conv_nd(4, 1, 1, 3)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(2, 3, channel_mult=(1, 2), attention_levels=(2,))


def test_learned_variance_doubles_the_output_channels() -> None:
    net = small_unet(1, 2, learned_variance=True)
    assert net(torch.randn(2, 2, 16), torch.zeros(2)).shape == (2, 4, 16)


@pytest.mark.parametrize(
    ("dims", "option", "bound"),
    [(1, "gradient_checkpointing", 0.5), (3, "gradient_checkpointing", 0.5), (3, "checkpoint_norms", 0.9)],
)
def test_gradient_checkpointing_same_gradients_less_saved_memory(dims: int, option: str, bound: float) -> None:
    """Checkpointing recomputes activations in the backward pass: identical gradients, and far
    fewer bytes held by autograd between forward and backward."""
    torch.manual_seed(0)
    kw = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8, groups=4)
    plain = UNet(dims, 1, num_classes=3, dropout=0.1, **kw)
    ckpt = UNet(dims, 1, num_classes=3, dropout=0.1, **{option: True}, **kw)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, *([8] * dims))
    t, y = torch.tensor([0.3, 0.7]), torch.tensor([0, 2])

    def run(net: UNet) -> tuple[list[torch.Tensor], int]:
        saved = 0

        def pack(v: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += v.numel() * v.element_size()
            return v

        torch.manual_seed(1)  # the same dropout masks; checkpoint replays the RNG state
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
            loss = net(x, t, y).square().mean()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        return list(grads), saved

    g_plain, bytes_plain = run(plain)
    g_ckpt, bytes_ckpt = run(ckpt)
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert bytes_ckpt < bound * bytes_plain


@pytest.mark.parametrize(("dims", "patch"), [(1, (4,)), (2, (2, 1)), (3, (2, 2, 2))])
def test_space_to_depth_round_trip_and_patched_unet(dims: int, patch: tuple[int, ...]) -> None:
    from multidiff.nn import depth_to_space, space_to_depth

    x = torch.randn(2, 3, *([8] * dims))
    folded = space_to_depth(x, patch)
    assert folded.shape == (2, 3 * math.prod(patch), *(8 // p for p in patch))
    assert torch.equal(depth_to_space(folded, patch), x)
    # a patch's values sit together in the channels: the first patch of channel 0
    first = x[(0, 0, *(slice(0, p) for p in patch))].reshape(-1)
    assert torch.equal(folded[(0, slice(0, math.prod(patch)), *([0] * dims))], first)
    net = UNet(
        dims,
        3,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        head_channels=8,
        groups=4,
        patch_size=patch,
    )
    odd = torch.randn(2, 3, *([7] * dims))  # padded up to patch * factor, cropped back
    assert net(odd, torch.tensor([1.0, 2.0])).shape == odd.shape


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_coordinate_channels_tell_the_network_where_it_is(dims: int) -> None:
    """``coordinates``: each position's coordinates (cell centres in [-1, 1], one channel per axis)
    go into the first convolution, after patching: the network equals one without them fed the
    coordinates as more input channels."""
    from multidiff.nn import coordinate_grid

    x = torch.randn(2, 3, *([8] * dims))
    grid = coordinate_grid(x)
    assert grid.shape == (2, dims, *([8] * dims))
    ticks = (torch.arange(8) + 0.5) / 8 * 2 - 1
    for axis in range(dims):
        line = grid[(0, axis, *([0] * axis), slice(None), *([0] * (dims - axis - 1)))]
        torch.testing.assert_close(line, ticks)
    kw = {"channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_levels": (1,), "groups": 4}
    placed = UNet(dims, 3, coordinates=True, **kw)
    torch.nn.init.normal_(placed.out[-1].weight)  # the zero-initialised output layer would hide everything
    fed = UNet(dims, 3 + dims, out_channels=3, **kw)
    fed.load_state_dict(placed.state_dict())
    c = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(placed(x, c), fed(torch.cat([x, grid], 1), c))
    # with patches, the coordinates are those of the grid the first convolution sees
    patched = UNet(dims, 3, coordinates=True, patch_size=2, **kw)
    assert patched.stem.in_channels == 3 * 2**dims + dims
    assert patched(x, c).shape == x.shape


def test_a_shallow_3d_convolution_has_a_true_weight_gradient_under_cpu_bf16() -> None:
    """torch 2.14's CPU bf16 Conv3d returns a garbage weight gradient (inf, 1e18) for an input of
    depth 2 under a 3x3x3 kernel, as at a 3D UNet's 2^3 level (multidiff.nn.Conv3d)."""
    torch.manual_seed(0)
    conv = conv_nd(3, 24, 24, 3, padding=1)
    for shape, bf16_out in (((8, 24, 2, 2, 2), False), ((8, 24, 2, 4, 4), False), ((8, 24, 4, 4, 4), True)):
        x = torch.randn(shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert (y.dtype == torch.bfloat16) == bf16_out  # only the shallow input leaves bf16
        y.float().square().mean().backward()
        got, conv.weight.grad = conv.weight.grad, None
        conv(x).square().mean().backward()
        want, conv.weight.grad = conv.weight.grad, None
        assert torch.isfinite(got).all() and (got - want).norm() / want.norm() < 0.02, shape
    xb = torch.randn(8, 24, 2, 2, 2, dtype=torch.bfloat16)  # bf16 tensors without autocast
    w = conv.to(torch.bfloat16)
    w(xb).float().square().mean().backward()
    assert w(xb).dtype == torch.bfloat16 and torch.isfinite(w.weight.grad).all()
    assert w.weight.grad.float().abs().max() < 10


@pytest.mark.parametrize("cross", [False, True])
def test_qk_norm_bounds_the_attention_logits(cross: bool) -> None:
    """QK-norm (``qk_norm=True``): each head's queries and keys are layer-normalised, so scaling the
    query and key projections up (what a high learning rate does to them) leaves the attention as
    it was; without it the logits grow with the scale and the attention collapses onto one key."""
    from multidiff.nn import TokenAttention

    torch.manual_seed(0)
    x, ctx = torch.randn(2, 7, 16), torch.randn(2, 5, 12)
    for qk_norm in (False, True):
        att = TokenAttention(16, 2, 12 if cross else None, qk_norm=qk_norm)
        assert (att.qk_norm is not None) == qk_norm
        y = att(x, ctx) if cross else att(x)
        with torch.no_grad():  # the query and key rows of the projections, times 30
            if cross:
                att.q.weight.mul_(30), att.q.bias.mul_(30), att.kv.weight[:16].mul_(30), att.kv.bias[:16].mul_(30)
            else:
                att.qkv.weight[:32].mul_(30), att.qkv.bias[:32].mul_(30)
        y30 = att(x, ctx) if cross else att(x)
        same = torch.allclose(y30, y, atol=1e-4)
        assert same == qk_norm, f"qk_norm={qk_norm}: scaled projections {'changed' if qk_norm else 'kept'} the output"


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_unet_with_qk_norm_keeps_its_masking_and_equivariance(dims: int) -> None:
    """Every self- and cross-attention block of a UNet built with ``qk_norm`` normalises its queries
    and keys; a masked token still changes nothing, and the network trains a step on every rank."""
    from multidiff.nn import CrossAttention, QKNorm

    torch.manual_seed(0)
    net = small_unet(dims, 2, token_dim=6, qk_norm=True)
    attn = [m for m in net.modules() if isinstance(m, (Attention, CrossAttention))]
    assert attn and len([m for m in net.modules() if isinstance(m, QKNorm)]) == len(attn)
    for p in net.parameters():  # every zero-initialised branch live
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 2, *SHAPES[dims][1:])
    tokens, mask = torch.randn(2, 4, 6), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    y = net(x, torch.zeros(2), tokens=tokens, token_mask=mask)
    other = tokens.clone()
    other[~mask] = 100.0
    assert torch.allclose(net(x, torch.zeros(2), tokens=other, token_mask=mask), y, atol=1e-5)
    other[0, 0] += 1.0
    assert not torch.allclose(net(x, torch.zeros(2), tokens=other, token_mask=mask)[0], y[0], atol=1e-5)
    y.square().mean().backward()
    assert all(
        m.q.weight.grad is not None and m.k.weight.grad is not None for m in net.modules() if isinstance(m, QKNorm)
    )


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_box_resampling_is_block_means_and_nearest_neighbours_on_every_rank(dims: int) -> None:
    """``resample="box"``: down is each 2^dims block's mean, up repeats each value over its block; no
    parameters, so neither can scale the residual stream up. A UNet built with it runs at odd sizes."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *(4,) * dims)
    down, up = Downsample(dims, 3, resample="box"), Upsample(dims, 3, resample="box")
    assert count_parameters(down) == count_parameters(up) == 0
    y = down(x)
    blocks = x.reshape(2, 3, *[s for _ in range(dims) for s in (2, 2)])  # (b, c, x0, p0, x1, p1, ...)
    assert torch.allclose(y, blocks.mean(dim=tuple(range(3, 3 + 2 * dims, 2))), atol=1e-6)
    z = up(y)
    assert z.shape == x.shape
    assert torch.equal(z[(slice(None), slice(None), *[slice(0, None, 2)] * dims)], y)
    assert torch.equal(z[(slice(None), slice(None), *[slice(1, None, 2)] * dims)], y)
    with pytest.raises(ValueError, match="resample must be one of"):
        Downsample(dims, 3, resample="pool")
    net, conv = small_unet(dims, 2, resample="box"), small_unet(dims, 2)
    assert count_parameters(conv) > count_parameters(net)
    shape = (2, 2, *SHAPES[dims][1:])
    assert net(torch.randn(shape), torch.zeros(2)).shape == shape

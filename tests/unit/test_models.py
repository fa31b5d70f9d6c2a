"""Generators and discriminators: parameter counts of the reference, shapes of every G/D pair,
receptive fields from the layers, norms, dropout placement and the paper's initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from p2p_dist.models import (
    DISCRIMINATORS,
    GENERATORS,
    build_discriminator,
    build_generator,
    count_parameters,
    native_size,
    receptive_field,
    set_inference_mode,
    size_multiple,
)


@pytest.mark.parametrize(
    "name, count",
    [
        ("unet_256", 54_413_955),
        ("unet_128", 41_828_995),
    ],
)
def test_generator_parameter_counts_match_the_reference(name, count):
    assert count_parameters(build_generator(name)) == count


@pytest.mark.parametrize(
    "name, count",
    [
        ("pixel", 9_024),
        ("patch16", 139_585),
        ("patch70", 2_768_705),
        ("patch286", 11_159_361),
    ],
)
def test_discriminator_parameter_counts_match_the_reference(name, count):
    assert count_parameters(build_discriminator(name)) == count


def test_unet_256_state_dict_has_the_reference_key_count():
    # 82 entries in the reference's latest_net_G.pth for unet_256 with BatchNorm
    assert len(build_generator("unet_256", ngf=8).state_dict()) == 82


def test_encoder_decoder_is_the_unet_without_skips():
    unet, ed = build_generator("unet_256", ngf=8), build_generator("encoder_decoder_256", ngf=8)
    # same down path; the decoder convs take half the channels (no concatenated encoder features)
    for a, b in zip(unet.down.modules(), ed.down.modules()):
        if isinstance(a, nn.Conv2d):
            assert a.weight.shape == b.weight.shape
    ups_unet = [m for m in unet.up.modules() if isinstance(m, nn.ConvTranspose2d)]
    ups_ed = [m for m in ed.up.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.in_channels for m in ups_unet[:-1]] == [2 * m.in_channels for m in ups_ed[:-1]]
    assert ups_unet[-1].in_channels == ups_ed[-1].in_channels  # innermost: no skip in either
    assert count_parameters(ed) < count_parameters(unet)


# valid (generator, size) pairs: a U-Net needs multiples of its own size, ResNet multiples of 4
SHAPE_CASES = [(g, 256) for g in GENERATORS] + [(g, 128) for g in GENERATORS if not g.endswith("_256")]
# PatchGAN output side for a square input: k4 s2 p1 halves, k4 s1 p1 loses one pixel
D_OUT = {
    256: {"pixel": 256, "patch16": 126, "patch70": 30, "patch286": 6},
    128: {"pixel": 128, "patch16": 62, "patch70": 14, "patch286": 2},
}


@pytest.fixture(scope="module")
def small_discriminators():
    return {name: build_discriminator(name, in_channels=6, ndf=8) for name in DISCRIMINATORS}


@pytest.mark.parametrize("g_name, size", SHAPE_CASES)
def test_every_generator_discriminator_pair_has_the_expected_shapes(g_name, size, small_discriminators):
    torch.manual_seed(0)
    G = build_generator(g_name, ngf=8)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = G(x)
        assert y.shape == (2, 3, size, size)
        assert y.abs().max() <= 1.0  # Tanh
        for d_name, D in small_discriminators.items():
            out = D(torch.cat([x, y], dim=1))
            side = D_OUT[size][d_name]
            assert out.shape == (2, 1, side, side), d_name


def test_colorization_generator_and_unconditional_discriminator():
    G = build_generator("unet_128", in_channels=1, out_channels=2, ngf=8)
    D = build_discriminator("patch70", in_channels=3, ndf=8)
    with torch.no_grad():
        ab = G(torch.randn(1, 1, 128, 128))
        assert ab.shape == (1, 2, 128, 128)
        assert D(torch.randn(1, 3, 128, 128)).shape == (1, 1, 14, 14)


def test_unet_refuses_a_size_it_cannot_take():
    G = build_generator("unet_256", ngf=8)
    with pytest.raises(ValueError, match="multiples of 256, got 128x128"):
        G(torch.randn(1, 3, 128, 128))
    assert size_multiple("unet_256") == 256 and size_multiple("unet_128") == 128
    assert size_multiple("resnet_9blocks") == 4 and native_size("resnet_9blocks") == 256


@pytest.mark.parametrize("name, rf", [("pixel", 1), ("patch16", 16), ("patch70", 70), ("patch286", 286)])
def test_receptive_fields_computed_from_the_layers(name, rf):
    assert receptive_field(build_discriminator(name, ndf=8)) == rf


@pytest.mark.parametrize("name", ["pixel", "patch16", "patch70"])
def test_receptive_field_matches_the_measured_gradient_support(name):
    """The input pixels that influence one output unit span exactly the computed field."""
    D = build_discriminator(name, in_channels=3, ndf=8).eval()  # eval: BatchNorm is per-pixel
    size = 160
    x = torch.randn(1, 3, size, size, requires_grad=True)
    out = D(x)
    c = out.shape[-1] // 2
    out[0, 0, c, c].backward()
    touched = x.grad.abs().sum(dim=(0, 1)) > 0
    rows = touched.any(dim=1).nonzero().flatten()
    cols = touched.any(dim=0).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) == receptive_field(D)
    assert int(cols.max() - cols.min() + 1) == receptive_field(D)


def test_norm_choices():
    batch = build_generator("unet_128", ngf=8, norm="batch")
    inst = build_generator("unet_128", ngf=8, norm="instance")
    none = build_generator("unet_128", ngf=8, norm="none")
    assert any(isinstance(m, nn.BatchNorm2d) for m in batch.modules())
    norms = [m for m in inst.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in none.modules())
    # convs followed by BatchNorm have no bias; with instance norm (as the reference) and none they do
    assert batch.down[1][1].bias is None and inst.down[1][1].bias is not None and none.down[1][1].bias is not None
    assert batch.up[0][1].bias is not None  # the outermost up conv always has one
    for norm in ("batch", "instance", "none"):
        D = build_discriminator("patch70", ndf=8, norm=norm)
        with torch.no_grad():
            assert D(torch.randn(2, 6, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="unknown norm"):
        build_generator("unet_128", norm="group")


def _dropouts(model):
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def test_dropout_sits_on_the_three_512_blocks_next_to_the_innermost():
    G = build_generator("unet_256", ngf=8)
    assert [i for i, block in enumerate(G.up) if any(isinstance(m, nn.Dropout) for m in block)] == [4, 5, 6]
    assert all(m.p == 0.5 for m in _dropouts(G))
    assert len(_dropouts(build_generator("unet_128", ngf=8))) == 2
    assert len(_dropouts(build_generator("unet_256", ngf=8, dropout=False))) == 0
    assert len(_dropouts(build_generator("resnet_9blocks", ngf=8))) == 9


def test_paper_mode_is_stochastic_and_eval_mode_is_not():
    G = build_generator("unet_256", ngf=8)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        set_inference_mode(G, "paper")
        assert G.training
        assert not torch.equal(G(x), G(x))  # dropout noise
        set_inference_mode(G, "eval")
        assert torch.equal(G(x), G(x))
    with pytest.raises(ValueError):
        set_inference_mode(G, "test")


def test_paper_initialisation():
    torch.manual_seed(0)
    G = build_generator("unet_256", init_gain=0.02)
    big = G.down[5][1].weight  # 512 x 512 x 4 x 4
    assert abs(big.mean().item()) < 1e-3
    assert big.std().item() == pytest.approx(0.02, rel=0.01)
    bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bn])
    assert weights.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(torch.count_nonzero(m.bias) == 0 for m in bn)
    assert torch.count_nonzero(G.up[0][1].bias) == 0
    D = build_discriminator("patch70", init_gain=0.05)
    assert D[5].weight.std().item() == pytest.approx(0.05, rel=0.02)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator("unet_512")
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator("patch32")
    with pytest.raises(ValueError, match="in_channels"):
        build_generator("unet_128", in_channels=0)


def _forward_backward(net, x, grad_seed=3):
    x = x.clone().requires_grad_(True)
    y = net(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)))
    return y.detach(), x.grad, [p.grad for p in net.parameters()]


@pytest.mark.parametrize(
    "build, in_channels, memory_format",
    [
        (lambda: build_generator("unet_128", 3, 3, ngf=8, dropout=False), 3, torch.contiguous_format),
        (lambda: build_generator("unet_128", 1, 2, ngf=8, dropout=False), 1, torch.channels_last),
        (lambda: build_generator("resnet_9blocks", 3, 3, ngf=8, dropout=False), 3, torch.contiguous_format),
        (lambda: build_discriminator("patch70", 6, ndf=8), 6, torch.channels_last),
        (lambda: build_discriminator("pixel", 3, ndf=8), 3, torch.contiguous_format),
    ],
)
def test_channel_padding_changes_no_result_and_no_state(build, in_channels, memory_format):
    """The 1/2/3/6-channel ends padded to 8 channels (as under bf16 on CUDA) compute the plain
    network's outputs, input gradients and parameter gradients, with the same state dict. The zero
    channels add exact zeros, so results are bit for bit the plain ones where the kernel for 8
    channels sums in the same order (D here; G's output in NCHW); where it sums the same terms in
    another order (the padded conv's weight gradient; a 1-channel conv in channels_last) they differ
    by float32 rounding: measured <= 3.2e-6 of each tensor's largest magnitude, checked at 1e-5."""
    from p2p_dist.models.channel_pad import PaddedConv2d, PaddedConvTranspose2d, pad_channels

    torch.manual_seed(0)
    plain = build().to(memory_format=memory_format)
    padded = copy.deepcopy(plain)
    keys = {k: v.shape for k, v in plain.state_dict().items()}
    assert pad_channels(padded) == 2
    assert {k: v.shape for k, v in padded.state_dict().items()} == keys
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), padded.state_dict().values()))
    kinds = [type(m) for m in padded.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert kinds.count(PaddedConv2d) + kinds.count(PaddedConvTranspose2d) == 2
    x = (torch.rand(2, in_channels, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1).contiguous(
        memory_format=memory_format
    )
    (y, dx, grads), (y_pad, dx_pad, grads_pad) = _forward_backward(plain, x), _forward_backward(padded, x)
    for a, b in zip([y, dx, *grads], [y_pad, dx_pad, *grads_pad]):
        assert a.shape == b.shape and (b - a).abs().max() <= 1e-5 * a.abs().max()


def test_reference_patchgan_is_ours_layer_for_layer():
    """The reference's NLayerDiscriminator as rebuilt for the tests and the bench's reference row: the
    paper's parameter count, and our PatchGAN's outputs with its weights (keys `model.i.*` -> `i.*`)."""
    from helpers.reference import RefNLayerDiscriminator

    torch.manual_seed(0)
    ref = RefNLayerDiscriminator(6, 64, 3)
    assert count_parameters(ref) == 2_768_705
    ref, ours = RefNLayerDiscriminator(6, 8, 3).train(), build_discriminator("patch70", 6, ndf=8).train()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in ref.state_dict().items()})
    x = torch.randn(2, 6, 64, 64)
    assert torch.equal(ref(x), ours(x))

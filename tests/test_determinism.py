"""The ``exact`` decoding mode: CDFs chosen in fixed point (the same whatever the arithmetic's order),
pixels in a fixed partition (the same whatever the thread count); the default for new files, while
``compressai`` keeps CompressAI's own bits. Every architecture of the registry, tiny widths."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
import torch.nn.functional as F
from test_architectures import IDS, VARIANTS, image, tiny

from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.models.exact import FixedPointConv, ReorderedReductions, fixed_partition
from compressml.models.lae import variants


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _latents_seen_by_synthesis(net, container) -> tuple[torch.Tensor, torch.Tensor]:
    """(the latents the decoder hands to g_s, the decoded pixels) of a file."""
    seen = []
    hook = net.g_s.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    try:
        rgb = lae_codec.decode(net, container).rgb
    finally:
        hook.remove()
    return seen[0], rgb


@pytest.mark.parametrize("spec", VARIANTS, ids=IDS)
def test_exact_mode_is_the_default_and_decodes_the_same_under_any_thread_count_or_summation_order(spec, threads):
    net = tiny(spec)
    x = image(spec)
    parsed = cml.parse(lae_codec.encode(net, lae_codec.SourceImage(rgb=x)).to_bytes())
    assert lae_codec.decoding_mode_of(parsed) == "exact"
    torch.set_num_threads(1)
    latents, pixels = _latents_seen_by_synthesis(net, parsed)
    assert pixels.shape == x.shape
    plain = lae_codec.decode(net, cml.parse(lae_codec.encode(net, lae_codec.SourceImage(rgb=x), mode="compressai").to_bytes())).rgb
    assert (pixels - plain).abs().max() < 0.02  # the same model: the fixed-point CDF path barely moves the means
    for count in (2, 3):
        torch.set_num_threads(count)
        assert torch.equal(_latents_seen_by_synthesis(net, parsed)[1], pixels)
    with ReorderedReductions():  # every convolution summed in another order: the CDFs and latents do not move
        assert torch.equal(_latents_seen_by_synthesis(net, parsed)[0], latents)


def test_reordered_summation_moves_compressai_mode_but_not_exact_mode():
    """The probe itself works: on a float hyper-decoder the reordering changes the scales."""
    spec = next(v for v in variants() if v.name == "mean_scale")
    net = tiny(spec)
    z_hat = torch.randn(1, net.N, 4, 4) * 3
    with torch.no_grad():
        plain = net.h_s(z_hat)
        with ReorderedReductions():
            reordered = net.h_s(z_hat)
        assert not torch.equal(plain, reordered)
        exact = [FixedPointConv(m) if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) else m for m in net.h_s]
        fixed = torch.nn.Sequential(*exact)(z_hat)
        with ReorderedReductions():
            assert torch.equal(torch.nn.Sequential(*exact)(z_hat), fixed)
        assert (fixed.float() - plain).abs().max() < 1e-3 * plain.abs().max()


def test_fixed_partition_computes_the_same_convolutions_in_bands(threads):
    rng = random.Random(0)
    torch.manual_seed(0)
    checked = 0
    while checked < 40:
        cin, cout, k, s, p = rng.choice([3, 8]), rng.choice([3, 8]), rng.choice([1, 3, 5]), rng.choice([1, 2]), rng.choice([0, 1, 2])
        if rng.random() < 0.5:
            layer = torch.nn.Conv2d(cin, cout, k, s, p)
        elif p < k:
            layer = torch.nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=rng.choice([0, s - 1]) if k >= s else 0)
        else:
            continue
        x = torch.randn(2, cin, rng.randint(k, 45), rng.randint(k, 30))
        with torch.no_grad():
            try:
                reference = layer(x)
            except RuntimeError:
                continue
            outs = []
            for count in (1, 2):
                torch.set_num_threads(count)
                with fixed_partition():
                    outs.append(layer(x))
        assert outs[0].shape == reference.shape
        assert torch.allclose(outs[0], reference, atol=1e-5)
        assert torch.equal(outs[0], outs[1])
        checked += 1


def test_fixed_point_convolutions_are_exact_integer_sums():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(96, 64, 5, padding=2)
    fixed = FixedPointConv(conv)
    x = torch.randn(1, 96, 6, 6) * 50
    with torch.no_grad():
        y = fixed(x)
        assert y.dtype == torch.float64
        assert torch.allclose(y.float(), conv(x), atol=1e-2, rtol=1e-3)
        # the same sums in another order, and on a float64 copy of the layer: identical
        assert torch.equal(FixedPointConv(conv.double())(x.double()), y)
        q = torch.round(x.double() * 2.0**fixed.frac)
        reordered = sum(F.conv2d(q[:, i : i + 1], fixed.weight_q[:, i : i + 1], padding=2) for i in reversed(range(96)))
        assert torch.equal(reordered * fixed.unscale + fixed.bias, y)


def test_one_pass_index_search_gives_compressais_indexes():
    from compressai.entropy_models import GaussianConditional

    from compressml.models.exact import build_indexes

    table = torch.exp(torch.linspace(torch.log(torch.tensor(0.11)), torch.log(torch.tensor(256.0)), 64))
    gc = GaussianConditional(table.tolist())
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        scales = torch.exp(torch.rand(2, 8, 9, 7, generator=g, dtype=dtype) * 8 - 4)
        scales.view(-1)[:64] = table.to(dtype)  # exactly on every boundary
        scales.view(-1)[64:70] = torch.tensor([0.0, -1.0, 1e-9, 1e9, float("inf"), 0.11], dtype=dtype)
        assert torch.equal(build_indexes(gc, scales), gc.build_indexes(scales))


# -- whole networks in exact arithmetic (MLLAE lossless), RED and MLLAE pixels --------------------------


def test_exact_float32_convolutions_do_not_depend_on_summation_order_or_threads(threads):
    from compressml.models.exact import ExactArithmetic

    torch.manual_seed(0)
    layers = [
        torch.nn.Conv2d(32, 16, 3, padding=1),
        torch.nn.Conv2d(96, 8, 5, stride=2, padding=2),
        torch.nn.ConvTranspose2d(24, 12, 5, stride=2, padding=2, output_padding=1),
    ]
    for layer in layers:
        x = torch.randn(2, layer.in_channels, 19, 23) * 7
        with torch.no_grad():
            reference = layer(x)
            outs = []
            for count, reorder in ((1, False), (2, False), (2, True)):
                torch.set_num_threads(count)
                # the reordering outside: the library kernels under the exact path sum in another order
                with ReorderedReductions() if reorder else contextlib.nullcontext(), ExactArithmetic():
                    outs.append(layer(x))
        assert outs[0].dtype == torch.float32
        assert all(torch.equal(o, outs[0]) for o in outs[1:])
        # 10-bit inputs, weights bounded in sum (about 4 bits for the largest of a 2400-input random layer)
        assert (outs[0] - reference).abs().max() < 0.06 * reference.abs().max()


def test_exact_tanh_is_tanh_from_basic_operations():
    from compressml.models.exact import ExactArithmetic, exact_tanh

    x = torch.linspace(-30, 30, 10001, dtype=torch.float64)
    assert (exact_tanh(x) - torch.tanh(x)).abs().max() < 1e-14
    with ExactArithmetic():
        assert torch.equal(torch.tanh(x), exact_tanh(x)) and torch.equal(x.tanh(), exact_tanh(x))


def _mllae(lossless: bool):
    from compressml.models.mllae import MLLAE

    torch.manual_seed(0)
    return MLLAE(bytes=16, block=16, channels=8, residual_channels=8, lossless=lossless, quantizer="ste", bits=2).eval()


def test_mllae_lossless_codes_in_exact_arithmetic_whatever_the_thread_count_or_summation_order(threads):
    import numpy as np

    from compressml.codec import mllae as mllae_codec

    model = _mllae(lossless=True)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 37, 45)).astype(np.float32)
    source = lae_codec.SourceImage(rgb=torch.from_numpy(rgb) / 255)
    torch.set_num_threads(2)
    data = mllae_codec.encode(model, source, b"f" * 16, "rans").to_bytes()
    parsed = cml.parse(data)
    assert parsed.section(mllae_codec.META)[-1] == mllae_codec.LOSSLESS_EXACT
    seen = []
    hook = model.residual.net.register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    try:
        for count, reorder in ((2, False), (1, False), (2, True)):
            torch.set_num_threads(count)
            with ReorderedReductions() if reorder else contextlib.nullcontext():
                decoded = mllae_codec.decode(model, cml.parse(data), b"f" * 16)
            assert torch.equal((decoded.rgb * 255).round(), torch.from_numpy(rgb))
    finally:
        hook.remove()
    phases = len(seen) // 3
    for k in range(phases):  # the residual model's outputs themselves: identical to the bit
        assert torch.equal(seen[k], seen[phases + k]) and torch.equal(seen[k], seen[2 * phases + k])
    # an encoder on one thread writes the same file
    torch.set_num_threads(1)
    assert mllae_codec.encode(model, source, b"f" * 16, "rans").to_bytes() == data


def test_mllae_and_red_pixels_do_not_depend_on_the_thread_count(threads):
    from compressml.codec import mllae as mllae_codec
    from compressml.codec.upscale import upscale_tensor
    from compressml.models.red import RED

    model = _mllae(lossless=False)
    x = torch.rand(3, 70, 90)
    data = mllae_codec.encode(model, lae_codec.SourceImage(rgb=x), b"f" * 16, "none").to_bytes()
    torch.manual_seed(0)
    red = RED(scale=2).eval()
    lr = torch.rand(1, 3, 150, 140)
    outs = []
    for count in (1, 2, 3):
        torch.set_num_threads(count)
        outs.append((mllae_codec.decode(model, cml.parse(data), b"f" * 16).rgb, upscale_tensor(red, lr, tile=256)))
    for pixels, upscaled in outs[1:]:
        assert torch.equal(pixels, outs[0][0]) and torch.equal(upscaled, outs[0][1])

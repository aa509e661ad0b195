"""LAE models from plain Python: building, padding, real coding vs. the forward pass."""

from __future__ import annotations

import pytest
import torch

from compressml.errors import ConfigError
from compressml.models import build_lae, compress, crop_to, decompress, forward_padded, load_coding_state, pad_to_multiple
from compressml.models.lae import is_updated, stride_of


def test_pad_and_crop_roundtrip():
    x = torch.rand(1, 3, 37, 50)
    padded, size = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (48, 64) and size == (37, 50)
    assert torch.equal(padded[..., 40, 55], x[..., 36, 49])  # replicated edge
    assert torch.equal(crop_to(padded, size), x)
    same, _ = pad_to_multiple(torch.rand(1, 3, 32, 32), 16)
    assert same.shape[-2:] == (32, 32)


def test_build_rejects_unknown_arch():
    with pytest.raises(ConfigError, match="unknown LAE architecture"):
        build_lae("nope")
    with pytest.raises(ConfigError, match="integer in 1..1024"):
        build_lae("factorized", channels=0)


@pytest.mark.parametrize("arch", ["factorized", "hyperprior", "mean_scale"])
def test_real_coding_matches_eval_forward_any_size(arch):
    torch.manual_seed(0)
    model = build_lae(arch, channels=8, latent_channels=12).eval()
    assert not is_updated(model)
    model.update(force=True)
    assert is_updated(model)
    x = torch.rand(1, 3, 45, 71)
    with torch.no_grad():
        expected = forward_padded(model, x)["x_hat"].clamp(0, 1)
    payload = compress(model, x)
    assert payload.size == (45, 71) and payload.num_bytes > 0
    decoded = decompress(model, payload)
    assert decoded.shape == x.shape
    assert torch.allclose(decoded, expected, atol=1e-5)
    assert stride_of(model) in (16, 64)


def test_load_coding_state_resizes_cdf_buffers():
    torch.manual_seed(0)
    trained = build_lae("hyperprior", channels=8, latent_channels=12)
    trained.update(force=True)
    fresh = build_lae("hyperprior", channels=8, latent_channels=12)
    # a model already updated on other weights has CDF buffers of other shapes
    with torch.no_grad():
        fresh.entropy_bottleneck.quantiles.mul_(3)
    fresh.update(force=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        torch.nn.Module.load_state_dict(fresh, trained.state_dict())
    load_coding_state(fresh, trained.state_dict())
    x = torch.rand(1, 3, 64, 64)
    a, b = compress(trained, x), compress(fresh, x)
    assert a.strings == b.strings


ARCHS = ["factorized", "hyperprior", "mean_scale"]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_is_compressai_forward(arch):
    """quantization="noise" in float32 is CompressAI's own forward, noise draw for noise draw."""
    torch.manual_seed(0)
    model = build_lae(arch, channels=8, latent_channels=12)
    x = torch.rand(2, 3, 64, 64)
    for training in (True, False):
        model.train(training)
        torch.manual_seed(1)
        ours = forward_padded(model, x)
        torch.manual_seed(1)
        theirs = model(x)
        assert torch.allclose(ours["x_hat"], theirs["x_hat"], atol=1e-6)
        for name, likelihoods in theirs["likelihoods"].items():
            assert torch.allclose(ours["likelihoods"][name], likelihoods, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_ste_decodes_rounded_latents_and_passes_gradients(arch):
    """Training with quantization="ste": the decoder sees exactly what it sees at coding time
    (the eval forward's reconstruction), the rate still sees noise, and gradients reach the encoder."""
    torch.manual_seed(0)
    model = build_lae(arch, channels=8, latent_channels=12)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        coded = forward_padded(model.eval(), x)
    model.train()
    out = forward_padded(model, x, "ste")
    assert torch.allclose(out["x_hat"], coded["x_hat"], atol=1e-5)
    assert not torch.allclose(out["likelihoods"]["y"], coded["likelihoods"]["y"])  # noise, not rounding
    torch.mean((out["x_hat"] - x) ** 2).backward()
    assert model.g_a[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="quantization"):
        forward_padded(model, x, "round")


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_precision_keeps_entropy_models_in_float32(arch):
    """Under bf16 autocast the transforms run in bf16 but the likelihoods are float32 and
    close to the float32 forward's; real coding inside autocast is the float32 codec."""
    torch.manual_seed(0)
    model = build_lae(arch, channels=8, latent_channels=12).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        exact = forward_padded(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = forward_padded(model, x)
    assert mixed["x_hat"].dtype == torch.float32
    for name, likelihoods in exact["likelihoods"].items():
        assert mixed["likelihoods"][name].dtype == torch.float32
        bits, mixed_bits = -torch.log2(likelihoods).sum(), -torch.log2(mixed["likelihoods"][name]).sum()
        assert abs(mixed_bits - bits) <= 0.05 * bits + 8
    model.update(force=True)
    payload = compress(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = compress(model, x)
        decoded = decompress(model, inside)
    assert inside.strings == payload.strings
    assert torch.equal(decoded, decompress(model, payload))

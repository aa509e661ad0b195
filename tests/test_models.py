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
    with pytest.raises(ConfigError, match="positive"):
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

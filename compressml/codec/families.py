"""The model families, one object each: every caller asks its family instead of branching on it.

A family knows how to build its network from a spec (a checkpoint's hyper-parameters or a bundle
manifest), check a manifest before anything is allocated, load weights into the network, code an
image (``.cml``), describe the graphs an export bundle writes, and name its curves. ``family(name)``
gives one; a new family is a subclass here and an entry in :data:`FAMILIES`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compressml.errors import BundleError, CheckpointError, CompressMLError, ConfigError, first_line
from compressml.models.graphs import Graph

WEIGHTS = "weights.safetensors"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_sizes(net: Mapping, limits: Mapping[str, int], bad) -> None:
    """Upper bounds of a manifest's size fields: a crafted manifest must not make the loader build
    (allocate) a network of any size before the weights are checked against it."""
    for key, limit in limits.items():
        if not _positive_int(net.get(key)) or net[key] > limit:
            raise bad(f"net.{key} must be an integer in 1..{limit}, got {net.get(key)!r}")


class Family(abc.ABC):
    """What every family answers; see the subclasses."""

    name: str = ""
    codes = True  # has a codec of its own (RED decodes the hybrid codec's base layer instead)

    # -- building -------------------------------------------------------------------------------
    @abc.abstractmethod
    def net_spec(self, hparams: Mapping) -> dict:
        """The network's spec in a checkpoint's hyper-parameters."""

    @abc.abstractmethod
    def build(self, spec: Mapping) -> nn.Module:
        """A fresh network (ConfigError or TypeError on a bad spec)."""

    def load_state(self, net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        net.load_state_dict(state, strict=True)

    def net_from_checkpoint(self, ckpt: Mapping, where: str) -> nn.Module:
        """The trained network of a checkpoint (read with ``weights_only``), in eval mode, ready to code."""
        hparams = ckpt.get("hyper_parameters") or {}
        try:
            net = self.build(self.net_spec(hparams))
        except (ConfigError, TypeError, KeyError) as e:
            raise CheckpointError(f"{where}: bad network hyper-parameters ({first_line(e)})") from None
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        try:
            self.load_state(net, state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: weights do not fit the network ({first_line(e)})") from None
        return net.eval()

    # -- bundles -------------------------------------------------------------------------------
    @abc.abstractmethod
    def validate_manifest(self, manifest: dict, bad, where: str) -> None:
        """Check the family's manifest fields (``bad(why)`` makes the one-line error)."""

    def manifest_spec(self, manifest: Mapping) -> Mapping:
        """What :meth:`build` takes, from a validated manifest."""
        return manifest["net"]

    @abc.abstractmethod
    def manifest_fields(self, net: nn.Module, hparams: Mapping) -> dict:
        """The family's fields of an export manifest."""

    # -- coding -------------------------------------------------------------------------------
    def coding_options(self, source: Mapping) -> dict:
        """The coding options of a model from its checkpoint's hyper-parameters or its manifest."""
        return {}

    def encode(self, net: nn.Module, image, fingerprint: bytes, **options):
        raise CompressMLError(f"a {self.name.upper()} model has no codec of its own")

    def decode(self, net: nn.Module, container, fingerprint: bytes):
        raise CompressMLError(f"a {self.name.upper()} model has no codec of its own")

    def record_extras(self, net: nn.Module, container) -> dict:
        """Family-specific columns of an evaluation record."""
        return {}

    def refinement(self, net: nn.Module, options: Mapping, steps: int, source: str):
        """Encoder-side refinement settings for ``steps`` steps (``compress --refine``), or a one-line refusal."""
        raise CompressMLError(f"--refine is for LAE models; {source} is an {self.name.upper()}")

    # -- graphs and names -------------------------------------------------------------------------------
    @abc.abstractmethod
    def export_graphs(self, net: nn.Module) -> tuple[list[Graph], dict]:
        """(graphs an export bundle writes, their description for the manifest)."""

    @abc.abstractmethod
    def curve_name(self, net: nn.Module) -> str:
        """The name of the model's curve in evaluations (``compressml-<architecture>``)."""


class LAEFamily(Family):
    """Lossy autoencoders: CompressAI's image models (see :func:`compressml.models.lae.architectures`)."""

    name = "lae"
    LIMITS = {"channels": 1024, "latent_channels": 1024}

    def net_spec(self, hparams: Mapping) -> dict:
        net = hparams.get("net")
        if not isinstance(net, Mapping):
            raise ConfigError("no net spec")
        return dict(net)

    def build(self, spec: Mapping) -> nn.Module:
        from compressml.models.lae import build_lae

        return build_lae(**spec)

    def load_state(self, net, state) -> None:
        from compressml.models.lae import is_updated, load_coding_state

        load_coding_state(net, state, strict=True)
        if not is_updated(net):  # checkpoints written by LAESystem always carry CDF tables; older ones may not
            net.update(force=True)

    def validate_manifest(self, manifest, bad, where) -> None:
        from compressml.models.lae import architectures

        arch = manifest.get("architecture")
        known = architectures()
        if arch not in known:
            raise BundleError(f"{where}: unknown architecture {arch!r}; known: {', '.join(known)}")
        spec = known[arch]
        if manifest.get("compressai_class") != spec.cls.__name__:
            raise bad(f"compressai_class {manifest.get('compressai_class')!r} does not match architecture {arch!r}")
        if manifest.get("stride") != spec.stride:
            raise bad(f"stride {manifest.get('stride')!r} does not match architecture {arch!r}")
        net = manifest.get("net")
        if not isinstance(net, dict) or not set(net) <= {
            "channels",
            "latent_channels",
            "groups",
            "variable_rate",
            "lmbda_range",
            "anchors",
        }:
            raise bad("net must be an object of channels, latent_channels (and groups; variable_rate, lmbda_range, anchors)")
        check_sizes({k: v for k, v in net.items() if k in ("channels", "latent_channels", "groups")}, self.LIMITS, bad)
        if "variable_rate" in net:
            lr = net.get("lmbda_range")
            if net["variable_rate"] is not True or not (
                isinstance(lr, list)
                and len(lr) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lr)
                and 0 < lr[0] < lr[1] <= 1e6
            ):
                raise bad("a variable-rate net needs variable_rate true and lmbda_range [min, max] with 0 < min < max")
            if not (_positive_int(net.get("anchors")) and 2 <= net["anchors"] <= 64):
                raise bad("net.anchors must be an integer in 2..64")
        groups = net.get("groups")
        if groups is not None and not (isinstance(groups, list) and 1 <= len(groups) <= 64 and all(_positive_int(g) for g in groups)):
            raise bad("net.groups must be a list of 1 to 64 positive integers")

    def manifest_spec(self, manifest):
        return {"arch": manifest["architecture"], **manifest["net"]}

    def manifest_fields(self, net, hparams) -> dict:
        from compressml.models.lae import architecture_of, net_spec

        spec, arch = net_spec(net), architecture_of(net)
        return {
            "family": self.name,
            "architecture": spec.pop("arch"),
            "compressai_class": arch.cls.__name__,
            "compressai_registry": arch.registry_name,
            "net": spec,
            "stride": arch.stride,
            "context": arch.context,
            "compressai_state_dict": WEIGHTS,
        }

    def coding_options(self, source) -> dict:
        return {"g": (source.get("hyper_parameters") or source).get("g")}

    def refinement(self, net, options, steps, source):
        from compressml.codec.lae import refinement_for
        from compressml.models.lae import check_refinable

        check_refinable(net)
        return refinement_for(options.get("g"), steps)

    def encode(self, net, image, fingerprint, refinement=None, decoding_mode=None, rate=None, **_):
        from compressml.codec import lae

        return lae.encode(net, image, fingerprint, refinement=refinement, mode=decoding_mode or lae.DEFAULT_MODE, rate=rate)

    def decode(self, net, container, fingerprint):
        from compressml.codec import lae

        return lae.decode(net, container, fingerprint)

    def export_graphs(self, net):
        from compressml.models.graphs import plain_transform
        from compressml.models.lae import stride_of
        from compressml.models.variable_rate import is_variable_rate

        stride = stride_of(net)
        x = torch.rand(1, 3, 2 * stride, 3 * stride, generator=torch.Generator().manual_seed(0))
        variable = is_variable_rate(net)
        g_a, g_s = (net.g_a.inner, net.g_s.inner) if variable else (net.g_a, net.g_s)  # the gains are weights
        with torch.no_grad():
            y = g_a(x)
        graphs = {
            "encoder": {
                "transform": "g_a",
                "input": {"name": "x", "shape": ["batch", 3, "height", "width"]},
                "output": {"name": "y", "shape": ["batch", int(y.shape[1]), "height/16", "width/16"]},
            },
            "decoder": {
                "transform": "g_s",
                "input": {"name": "y", "shape": ["batch", int(y.shape[1]), "height", "width"]},
                "output": {"name": "x_hat", "shape": ["batch", 3, "16*height", "16*width"]},
            },
            "note": (
                f"height and width of an image must be multiples of the stride ({stride}; pad as compressml "
                "does); x_hat is not clamped. The entropy coding (hyperprior, context model) is CompressAI's, "
                "from the state dict"
            ),
            "max_abs_diff": {},
        }
        if variable:
            graphs["note"] += (
                ". Variable rate: the coded latent is y * exp(g), and the decoder gets y_hat * exp(g'), "
                "g and g' interpolated linearly in log λ between the rows of rate_gain.log_gain and "
                "rate_gain.log_inverse (anchors spread evenly over rate_gain.log_range)"
            )
        return [
            Graph("encoder", plain_transform(g_a), g_a, x, "x", "y"),
            Graph("decoder", plain_transform(g_s), g_s, y, "y", "x_hat"),
        ], graphs

    def curve_name(self, net) -> str:
        from compressml.models.lae import architecture_of

        return f"compressml-{architecture_of(net).name}"


class MLLAEFamily(Family):
    """(Mostly) lossless autoencoders with a fixed code of at most N bytes per block."""

    name = "mllae"
    LIMITS = {
        "bytes": 1 << 20,
        "block": 1024,
        "bits": 16,
        "stride": 1024,
        "channels": 1024,
        "max_latent_channels": 4096,
        "residual_channels": 1024,
    }

    def net_spec(self, hparams):
        from compressml.models.mllae import NET_KEYS

        return {k: hparams[k] for k in NET_KEYS if k in hparams}  # the rest: the network's defaults

    def build(self, spec):
        from compressml.models.mllae import MLLAE

        return MLLAE(**spec)

    def validate_manifest(self, manifest, bad, where) -> None:
        from compressml.codec.mllae import ENTROPY_STAGES
        from compressml.models.mllae import NET_KEYS

        net = manifest.get("net")
        if not isinstance(net, dict) or set(net) != set(NET_KEYS):
            raise bad(f"net must hold exactly {', '.join(NET_KEYS)}")
        if manifest.get("entropy") not in ENTROPY_STAGES:
            raise bad(f"entropy must be one of {', '.join(ENTROPY_STAGES)}")
        check_sizes(net, self.LIMITS, bad)

    def manifest_fields(self, net, hparams) -> dict:
        return {
            "family": self.name,
            "architecture": "mllae",
            "compressai_class": None,
            "net": self.net_spec(hparams),
            "geometry": net.geometry.as_dict(),
            "entropy": hparams.get("entropy", "none"),
            "stride": net.geometry.block,
        }

    def coding_options(self, source) -> dict:
        return {"entropy": source.get("entropy")}

    def encode(self, net, image, fingerprint, entropy="none", max_error=0, **_):
        from compressml.codec import mllae

        return mllae.encode(net, image, fingerprint, entropy, max_error=max_error)

    def decode(self, net, container, fingerprint, region=None):
        from compressml.codec import mllae

        return mllae.decode(net, container, fingerprint, region=region)

    def record_extras(self, net, container) -> dict:
        from compressml.codec.mllae import block_payload_sizes

        sizes = block_payload_sizes(container, net)
        return {"block_bytes_max": max(sizes), "block_bytes_mean": sum(sizes) / len(sizes), "block_budget": net.geometry.bytes}

    def export_graphs(self, net):
        from compressml.models.graphs import MLLAEDecoder, MLLAEEncoder

        g = net.geometry
        encoder, decoder = MLLAEEncoder(net), MLLAEDecoder(net)
        x = torch.rand(2, 3, g.block, g.block, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = encoder(x)
        code_shape = ["blocks", g.latent_channels, g.side, g.side]
        graphs = {
            "encoder": {
                "transform": "encoder + quantizer",
                "input": {"name": "x", "shape": ["blocks", 3, g.block, g.block]},
                "output": {"name": "y", "shape": code_shape},
            },
            "decoder": {
                "transform": "decoder",
                "input": {"name": "y", "shape": code_shape},
                "output": {"name": "x_hat", "shape": ["blocks", 3, g.block, g.block]},
            },
            "note": (
                f"one {g.block}x{g.block} block per batch item (tile and edge-pad images as compressml does); "
                f"y holds the integer code ({g.bits} bit(s) per element) as floats; x_hat is clamped to [0, 1]"
            ),
            "max_abs_diff": {},
        }
        return [Graph("encoder", encoder, encoder, x, "x", "y"), Graph("decoder", decoder, decoder, y, "y", "x_hat")], graphs

    def curve_name(self, net) -> str:
        return "compressml-mllae-lossless" if net.lossless else f"compressml-mllae-{net.geometry.bytes}B"


class REDFamily(Family):
    """Resolution-enhancement decoders (super-resolution); the decoder of the hybrid codec."""

    name = "red"
    codes = False

    def net_spec(self, hparams):
        from compressml.models.red import NET_KEYS

        return {k: hparams[k] for k in NET_KEYS if k in hparams}  # the rest: the network's defaults

    def build(self, spec):
        from compressml.models.red import RED

        return RED(**spec)

    def validate_manifest(self, manifest, bad, where) -> None:
        from compressml.models.red import ARCHITECTURES, NET_KEYS, SCALES

        net = manifest.get("net")
        if not isinstance(net, dict) or set(net) != set(NET_KEYS):
            raise bad(f"net must hold exactly {', '.join(NET_KEYS)}")
        if net["arch"] not in ARCHITECTURES:
            raise BundleError(f"{where}: unknown architecture {net['arch']!r}; known: {', '.join(ARCHITECTURES)}")
        if manifest.get("architecture") != net["arch"]:
            raise bad(f"architecture {manifest.get('architecture')!r} does not match net.arch {net['arch']!r}")
        if type(net["scale"]) is not int or net["scale"] not in SCALES or manifest.get("scale") != net["scale"]:
            raise bad(f"scale and net.scale must be the same one of {', '.join(map(str, SCALES))}")
        if any(net[k] is not None and type(net[k]) is not int for k in ("channels", "blocks")):
            raise bad("net.channels and net.blocks must be integers or null")
        if (net["channels"] or 0) > 1024 or (net["blocks"] or 0) > 256:
            raise bad("net.channels (<= 1024) or net.blocks (<= 256) is out of range")
        if not isinstance(net["global_skip"], bool):
            raise bad("net.global_skip must be true or false")

    def manifest_fields(self, net, hparams) -> dict:
        return {"family": self.name, "architecture": net.arch, "compressai_class": None, "net": self.net_spec(hparams), "scale": net.scale}

    def export_graphs(self, net):
        from compressml.models.graphs import REDUpscaler

        s = net.scale
        x = torch.rand(1, 3, 11, 14, generator=torch.Generator().manual_seed(0))
        graphs = {
            "upscaler": {
                "transform": "RED (global skip: antialiased bicubic as transposed convolutions)" if net.global_skip else "RED",
                "input": {"name": "lr", "shape": ["batch", 3, "height", "width"]},
                "output": {"name": "sr", "shape": ["batch", 3, f"{s}*height", f"{s}*width"]},
            },
            "note": "lr is RGB in [0, 1], any size; sr is not clamped (clamp to [0, 1] as compressml does)",
            "max_abs_diff": {},
        }
        return [Graph("upscaler", REDUpscaler(net), net, x, "lr", "sr")], graphs

    def curve_name(self, net) -> str:
        return f"compressml-red-{net.arch}-x{net.scale}"


FAMILIES: dict[str, Family] = {f.name: f for f in (LAEFamily(), MLLAEFamily(), REDFamily())}


def family(name: str | None) -> Family:
    """The family called ``name``; an unknown one is a one-line CheckpointError."""
    if name not in FAMILIES:
        raise CheckpointError(f"unknown model family {name!r} (this version knows {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_of(net: nn.Module) -> Family:
    """The family of a built network."""
    from compressml.models.mllae import MLLAE
    from compressml.models.red import RED

    if isinstance(net, MLLAE):
        return FAMILIES["mllae"]
    if isinstance(net, RED):
        return FAMILIES["red"]
    return FAMILIES["lae"]

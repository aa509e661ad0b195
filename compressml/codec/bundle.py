"""Reading export bundles: a folder of safetensors weights and a JSON manifest.

A bundle is made by :mod:`compressml.export`. Reading one never unpickles
anything: the manifest is JSON, the weights are safetensors, and every file the
manifest lists is checked against its SHA-256 before the weights are used. So
a bundle from an untrusted source is safe to load; the worst it can do is fail
with a one-line :class:`~compressml.errors.BundleError`.

Families: ``lae`` (the weights file is CompressAI's own state dict, CDF tables
included, so ``<Class>(N=..., M=...)`` with the manifest's widths, then ``load_state_dict(
safetensors.torch.load_file(path))``, gives a model whose ``compress`` writes the same strings as
compressml; :func:`load_compressai` does that), ``mllae``
(an :class:`~compressml.models.mllae.MLLAE`) and ``red`` (a super-resolution
:class:`~compressml.models.red.RED`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from compressai.models.base import CompressionModel

from compressml.codec.families import FAMILIES, WEIGHTS, family
from compressml.errors import BundleError, ConfigError, first_line
from compressml.hashing import sha256_file

FORMAT = "compressml-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_HEX = re.compile(r"[0-9a-f]+")


def bundle_root(path: str | Path) -> Path:
    """The bundle folder for ``path``: the folder itself or its ``manifest.json``."""
    path = Path(path)
    if path.is_dir():
        root = path
    elif path.name == MANIFEST and path.is_file():
        root = path.parent
    elif not path.exists():
        raise BundleError(f"{path}: no such bundle folder")
    else:
        raise BundleError(f"{path}: not an export bundle (name its folder or its {MANIFEST})")
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root}: not an export bundle (no {MANIFEST})")
    return root


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_HEX.fullmatch(value))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_manifest(manifest: Any, where: str) -> dict:
    """Check every field a loader relies on; returns the manifest or raises a one-line BundleError."""

    def bad(why: str) -> BundleError:
        return BundleError(f"{where}: malformed manifest ({why})")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("format") != FORMAT:
        raise bad(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not _positive_int(version):
        raise bad("format_version missing")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format {version} was made by a newer compressml (this one reads up to {FORMAT_VERSION})")
    if manifest.get("family") not in FAMILIES:
        known = ", ".join(repr(f) for f in FAMILIES)
        raise BundleError(f"{where}: unknown model family {manifest.get('family')!r} (this compressml loads {known})")
    family(manifest["family"]).validate_manifest(manifest, bad, where)
    if manifest.get("dtype", "float32") not in ("float32", "float16"):
        raise bad(f"dtype must be float32 or float16, got {manifest.get('dtype')!r}")
    if not _is_hex(manifest.get("fingerprint"), 32):
        raise bad("fingerprint must be 32 hex digits")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise bad(f"files must list {WEIGHTS}")
    for name, entry in files.items():
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", "..", MANIFEST):
            raise bad(f"file name {name!r} is not a plain file name")
        if not isinstance(entry, dict) or not _is_hex(entry.get("sha256"), 64):
            raise bad(f"files[{name!r}] needs a sha256 of 64 hex digits")
    return manifest


def read_manifest(path: str | Path) -> tuple[Path, dict]:
    """(bundle folder, validated manifest) for a bundle folder or its manifest.json."""
    root = bundle_root(path)
    where = str(root)
    try:
        text = (root / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: cannot read {MANIFEST} ({e})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}: malformed manifest (not JSON: {e.msg} at line {e.lineno})") from None
    return root, validate_manifest(manifest, where)


def verify_files(root: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and has its recorded SHA-256."""
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{root}: {name} is missing from the bundle")
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{root}: {name} does not match its SHA-256 in {MANIFEST} (altered or corrupt)")


def read_weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(root / WEIGHTS, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{root}: {WEIGHTS} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    # float16 bundles (export dtype=float16) compute in float32, as they were fingerprinted
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def _check_fingerprint(net: torch.nn.Module, root: Path, manifest: dict) -> None:
    from compressml.codec.lae import weights_fingerprint

    actual = weights_fingerprint(net).hex()
    if actual != manifest["fingerprint"]:
        raise BundleError(f"{root}: weights fingerprint {actual[:12]} does not match the manifest's {manifest['fingerprint'][:12]}")


def load_bundle(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode: a CompressAI model or an MLLAE ready to code, or a RED ready to upscale, manifest)
    from a bundle folder or its manifest.json.

    Checks the manifest, the SHA-256 of every listed file, and that the loaded
    weights have the manifest's fingerprint (so ``.cml`` files made from the
    training checkpoint decode with the bundle and vice versa).
    """
    root, manifest = read_manifest(path)
    verify_files(root, manifest)
    state = read_weights(root)
    owner = family(manifest["family"])
    try:
        net = owner.build(owner.manifest_spec(manifest))
    except (ConfigError, TypeError, RuntimeError, MemoryError) as e:
        raise BundleError(f"{root}: {first_line(e)}") from None
    try:
        owner.load_state(net, state)
    except RuntimeError as e:
        raise BundleError(f"{root}: weights do not fit the manifest's network ({str(e).strip().splitlines()[0]})") from None
    net.eval()
    _check_fingerprint(net, root, manifest)
    return net, manifest


def load_compressai(path: str | Path) -> CompressionModel:
    """The bundle's model built by CompressAI itself (``<Class>.from_state_dict``), verified like :func:`load_bundle`."""
    import compressai.models

    root, manifest = read_manifest(path)
    if manifest["family"] != "lae":
        raise BundleError(f"{root}: a {manifest['family']!r} bundle has no CompressAI model")
    verify_files(root, manifest)
    from compressml.models.lae import architecture

    cls = getattr(compressai.models, manifest["compressai_class"])
    net_args = manifest["net"]
    kwargs = {"N": net_args["channels"]}
    if "M" in architecture(manifest["architecture"]).widths:
        kwargs["M"] = net_args["latent_channels"]
    if net_args.get("groups") is not None:
        kwargs["groups"] = net_args["groups"]
    try:
        net = cls(**kwargs)  # CompressAI's own constructor and its resizing load
        net.load_state_dict(read_weights(root))
    except (KeyError, RuntimeError, ValueError, TypeError, AssertionError) as e:
        raise BundleError(f"{root}: CompressAI cannot load the weights ({str(e).strip().splitlines()[0]})") from None
    net.eval()
    _check_fingerprint(net, root, manifest)
    return net

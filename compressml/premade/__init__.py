"""Premade models shipped inside the package: float16 export bundles, usable with no download.

``models.json`` (beside this file) lists them: name, family, what it is for, the export bundle
folder (under this package), the recipe that trained it (an experiment config), the training
record (data, steps, wall time, device) and the figures measured on Kodak or Set5. The bundles
are ordinary export bundles (:mod:`compressml.codec.bundle`): loading one checks its manifest
and the SHA-256 of its files, and never unpickles anything.

``compressml compress photo.png`` uses the default premade LAE (the entry marked ``"default":
true``: one variable-rate network, ``-q 0..100``; without one, the fixed-rate family ``lae-q1..qK``,
``-q`` picking a member), ``compressml decompress`` finds the premade model that made a file by its
fingerprint (earlier premade models stay in the package so that their files keep decoding), and
``compressml models`` prints this list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressml.errors import CompressMLError, ConfigError

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "models.json"
DEFAULT_QUALITY = 3  # of the fixed-rate LAE family, when -q is not given


@dataclass(frozen=True)
class Premade:
    """One premade model: its registry entry and where its bundle lies."""

    name: str
    family: str  # lae, mllae or red
    bundle: Path
    fingerprint: str
    quality: int | None = None  # fixed-rate LAE: its rank in the family (1 = smallest files)
    scale: int | None = None  # RED
    description: str = ""
    recipe: str = ""
    training: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    default: bool = False  # the model compress uses without -m
    variable_rate: bool = False


def registry_entries(path: Path = REGISTRY) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CompressMLError(f"{path}: the premade model list is unreadable ({e})") from None
    return list(doc.get("models") or [])


def premade_models(path: Path = REGISTRY) -> list[Premade]:
    """Every premade model whose bundle is present in the package."""
    out = []
    for e in registry_entries(path):
        bundle = path.parent / e["bundle"]
        if (bundle / "manifest.json").is_file():
            out.append(
                Premade(
                    e["name"],
                    e["family"],
                    bundle,
                    e["fingerprint"],
                    e.get("quality"),
                    e.get("scale"),
                    e.get("description", ""),
                    e.get("recipe", ""),
                    e.get("training") or {},
                    e.get("measured") or {},
                    bool(e.get("default")),
                    bool(e.get("variable_rate")),
                )
            )
    return out


def lae_family() -> list[Premade]:
    """The premade fixed-rate LAE models, by quality (1 = lowest rate)."""
    return sorted((m for m in premade_models() if m.family == "lae" and m.quality is not None), key=lambda m: m.quality)


def default_lae() -> Premade | None:
    """The premade LAE that ``compress`` uses without a model (a variable-rate network), if any."""
    return next((m for m in premade_models() if m.family == "lae" and m.default), None)


def find(name: str) -> Premade | None:
    """The premade model called ``name`` (``lae-q2``, ``red-x2``, ...), if there is one."""
    return next((m for m in premade_models() if m.name == name), None)


def lae_for_quality(quality: int | None) -> Premade:
    """The premade LAE for ``-q`` (1..K, default :data:`DEFAULT_QUALITY`)."""
    family = lae_family()
    if not family:
        raise ConfigError("this installation has no premade LAE models: give a model with -m")
    quality = DEFAULT_QUALITY if quality is None else quality
    qualities = [m.quality for m in family]
    if quality not in qualities:
        raise ConfigError(f"-q must be one of {', '.join(map(str, qualities))} for the premade LAE models, got {quality}")
    return family[qualities.index(quality)]


def by_fingerprint(fingerprint: bytes | str) -> Premade | None:
    """The premade model whose weights have this fingerprint (what a ``.cml`` header names)."""
    hexed = fingerprint.hex() if isinstance(fingerprint, bytes) else fingerprint
    return next((m for m in premade_models() if m.fingerprint == hexed), None)


def resolve_model(spec: str) -> str:
    """A ``-m`` value: a premade model's name gives its bundle folder, anything else is a path."""
    found = find(spec)
    return str(found.bundle) if found is not None else spec

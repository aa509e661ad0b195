"""What ``compressml compress/decompress -m MODEL`` codes with: the model's own codec, or, for a RED
model, the hybrid codec around it. Above :mod:`~compressml.codec.files`, :mod:`~compressml.codec.hybrid`
and :mod:`~compressml.codec.upscale`, which it puts together."""

from __future__ import annotations

from pathlib import Path

from compressml.codec.families import family
from compressml.codec.files import CodecModel, load_net
from compressml.errors import CompressMLError


def load_codec(model: str | Path, base: str | None = None, setting: float | None = None):
    """What ``compressml compress/decompress -m MODEL [--base BASE] [-q Q]`` codes with: the model's
    own codec, or with a RED model the hybrid codec (``base``: classical codec name or LAE model).
    ``setting`` (-q): a variable-rate LAE's quality 0..100, or the hybrid base codec's quality."""
    from compressml.codec.hybrid import HybridCodec
    from compressml.codec.upscale import Upscaler

    net, name, fingerprint, options = load_net(model)  # loaded once, whatever the family
    if not family(name).codes:
        if setting is not None and setting != int(setting):
            raise CompressMLError(f"-q for the hybrid codec is the base codec's quality: a whole number, got {setting:g}")
        return HybridCodec.around(
            Upscaler(net=net, source=str(model), fingerprint=fingerprint), base, None if setting is None else int(setting)
        )
    codec = CodecModel(net=net, fingerprint=fingerprint, source=str(model), family=name, options=options)
    if base is not None:
        raise CompressMLError("--base is for the hybrid codec: -m must then be a RED model")
    if setting is not None:
        if not codec.variable_rate:
            raise CompressMLError(
                f"-q is for variable-rate LAE models (0..100), the premade family (no -m) and the hybrid codec; {model} codes at one rate"
            )
        return codec.at(float(setting))
    return codec

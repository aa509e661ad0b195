"""The ``.cml`` container: one compressed image, self-describing and checked before use.

Layout (big-endian)::

    magic        4  b"CML\\x1a"
    version      1  FORMAT_VERSION (2; files of version 1 are still read)
    family       1  FAMILY_IDS (1 = LAE, 2 = MLLAE, 3 = hybrid: base codec + RED)
    flags        2  reserved, 0
    fingerprint 16  first 16 bytes of the SHA-256 of the weights that made the file
    height       4  original image geometry
    width        4
    channels     1  1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)
    bit_depth    1  8 or 16
    pad_h        2  padding added below / right before coding
    pad_w        2
    n_sections   2
    then n_sections times:  kind 1, length 4, payload
    crc32        4  of everything before it

Section kinds are the family's (see each codec module, and docs/FORMAT.md for the whole
specification). Since version 2, kinds 0x80 and above are optional: a reader that does not know
one skips it; a kind below 0x80 that a reader does not know makes it refuse the file.

The reader checks the size, magic, version, family, geometry limits, every section
length against the bytes that remain, and the CRC, all before it allocates
anything sized by the file; every failure is a one-line :class:`ContainerError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from compressml.codec import limits
from compressml.errors import CompressMLError

MAGIC = b"CML\x1a"
FORMAT_VERSION = 2
OPTIONAL_KINDS = 0x80  # section kinds from here on may be skipped by a reader that does not know them
FAMILY_IDS = {"lae": 1, "mllae": 2, "hybrid": 3}
FAMILY_NAMES = {v: k for k, v in FAMILY_IDS.items()}

_HEADER = struct.Struct(">4sBBH16sIIBBHHH")
_SECTION = struct.Struct(">BI")
_CRC = struct.Struct(">I")

MAX_SIDE = limits.MAX_SIDE  # 65536 pixels a side
MAX_PIXELS = limits.DEFAULT_MAX_PIXELS  # 268 Mpixel unless COMPRESSML_MAX_PIXELS says otherwise
MAX_SECTIONS = 1024


class ContainerError(CompressMLError):
    """A .cml file is truncated, corrupt, of a newer format, or for other weights."""


@dataclass
class Container:
    family: str
    fingerprint: bytes
    height: int
    width: int
    channels: int = 3
    bit_depth: int = 8
    pad_h: int = 0
    pad_w: int = 0
    sections: list[tuple[int, bytes]] = field(default_factory=list)
    version: int = FORMAT_VERSION  # as read; files are always written at FORMAT_VERSION

    def check_kinds(self, known: set[int]) -> None:
        """Refuse a section this reader must understand but does not (a newer file's)."""
        for kind, _ in self.sections:
            if kind not in known and kind < OPTIONAL_KINDS:
                raise ContainerError(f"unknown section kind {kind:#04x} (made by a newer compressml?)")

    def section(self, kind: int) -> bytes:
        for k, payload in self.sections:
            if k == kind:
                return payload
        raise ContainerError(f"missing section {kind:#04x}")

    def sections_of(self, kind: int) -> list[bytes]:
        return [payload for k, payload in self.sections if k == kind]

    @property
    def payload_bytes(self) -> int:
        return sum(len(p) for _, p in self.sections)

    def to_bytes(self) -> bytes:
        _check_geometry(self.height, self.width, self.channels, self.bit_depth)
        if self.family not in FAMILY_IDS:
            raise ContainerError(f"unknown model family {self.family!r}")
        if len(self.fingerprint) != 16:
            raise ContainerError("fingerprint must be 16 bytes")
        parts = [
            _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                FAMILY_IDS[self.family],
                0,
                self.fingerprint,
                self.height,
                self.width,
                self.channels,
                self.bit_depth,
                self.pad_h,
                self.pad_w,
                len(self.sections),
            )
        ]
        for kind, payload in self.sections:
            parts.append(_SECTION.pack(kind, len(payload)))
            parts.append(payload)
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))


def _check_geometry(height: int, width: int, channels: int, bit_depth: int) -> None:
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ContainerError(f"image size {width}x{height} is out of range")
    if height * width > limits.max_pixels():
        raise ContainerError(
            f"a {width}x{height} image is above the limit of {limits.max_pixels()} pixels "
            f"(set {limits.ENV_MAX_PIXELS} to allow larger ones)"
        )
    if channels not in (1, 2, 3, 4):
        raise ContainerError(f"unsupported channel count {channels}")
    if bit_depth not in (8, 16):
        raise ContainerError(f"unsupported bit depth {bit_depth}")


def parse(data: bytes) -> Container:
    """Validate and split a .cml file; raises :class:`ContainerError` on anything unexpected."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise ContainerError("not a compressml file (wrong magic bytes)")
    if len(data) < _HEADER.size + _CRC.size:
        raise ContainerError("truncated file (shorter than its header)")
    (_, version, family_id, _flags, fingerprint, height, width, channels, bit_depth, pad_h, pad_w, n_sections) = _HEADER.unpack_from(
        data, 0
    )
    if version > FORMAT_VERSION:
        raise ContainerError(f"made by a newer compressml (format v{version}); this version reads up to v{FORMAT_VERSION}")
    if version < 1:
        raise ContainerError(f"invalid format version {version}")
    if family_id not in FAMILY_NAMES:
        raise ContainerError(f"unknown model family id {family_id}")
    _check_geometry(height, width, channels, bit_depth)
    if n_sections > MAX_SECTIONS:
        raise ContainerError(f"too many sections ({n_sections})")
    end = len(data) - _CRC.size
    pos, sections = _HEADER.size, []
    for i in range(n_sections):
        if pos + _SECTION.size > end:
            raise ContainerError(f"truncated file (section {i} header is past the end)")
        kind, length = _SECTION.unpack_from(data, pos)
        pos += _SECTION.size
        if length > end - pos:
            raise ContainerError(f"section {i} claims {length} bytes but only {end - pos} remain")
        sections.append((kind, data[pos : pos + length]))
        pos += length
    if pos != end:
        raise ContainerError(f"{end - pos} unexpected bytes after the last section (truncated or corrupt file)")
    (crc,) = _CRC.unpack_from(data, end)
    if crc != zlib.crc32(data[:end]):
        raise ContainerError("checksum mismatch: the file is corrupt")
    return Container(
        family=FAMILY_NAMES[family_id],
        fingerprint=fingerprint,
        height=height,
        width=width,
        channels=channels,
        bit_depth=bit_depth,
        pad_h=pad_h,
        pad_w=pad_w,
        sections=sections,
        version=version,
    )

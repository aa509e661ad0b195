"""Compact binary encodings inside ``.cml`` sections: unsigned varints and small trees of integers.

A latent's shape is a tree for some architectures (ELIC: a map of lists of (C, H, W) triples), so
format version 2 stores it as a tree. The encoding (specified byte by byte in docs/FORMAT.md)::

    varint   LEB128: 7 bits per byte, least significant group first, high bit set on all but the last
    node     tag (1 byte) then its body:
             0x00 INT   varint
             0x01 LIST  varint count, then count nodes
             0x02 MAP   varint count, then count times (key: 1-byte length + ASCII, node)

Readers check every count against the bytes that remain and the limits below before they build
anything, so a crafted section fails with one line.
"""

from __future__ import annotations

from compressml.codec.container import ContainerError

INT, LIST, MAP = 0x00, 0x01, 0x02
MAX_DEPTH = 8
MAX_NODES = 4096
MAX_INT = (1 << 32) - 1
MAX_VARINT_BYTES = 5  # enough for MAX_INT


def write_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_INT:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); a ContainerError when it runs past the end or MAX_INT."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos >= len(data):
            raise ContainerError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > MAX_INT:
                break
            return value, pos
    raise ContainerError("varint too long")


def write_tree(node) -> bytes:
    """An int, a tuple/list of nodes or a dict of str -> node, as bytes."""
    if isinstance(node, bool):
        raise ValueError("booleans are not tree nodes")
    if isinstance(node, int):
        return bytes([INT]) + write_varint(node)
    if isinstance(node, (list, tuple)):
        return bytes([LIST]) + write_varint(len(node)) + b"".join(write_tree(v) for v in node)
    if isinstance(node, dict):
        parts = [bytes([MAP]), write_varint(len(node))]
        for key, value in node.items():
            raw = str(key).encode("ascii")
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"map key {key!r} must be 1 to 255 ASCII bytes")
            parts += [bytes([len(raw)]), raw, write_tree(value)]
        return b"".join(parts)
    raise ValueError(f"cannot encode {type(node).__name__} in a tree")


def read_tree(data: bytes, pos: int = 0, whole: bool = True):
    """The tree at ``pos`` (ints, tuples, dicts); with ``whole`` the section must end with it.
    Returns the tree, or (tree, next position) when not ``whole``."""
    budget = [MAX_NODES]

    def node(pos: int, depth: int):
        if depth > MAX_DEPTH:
            raise ContainerError("tree too deep")
        budget[0] -= 1
        if budget[0] < 0:
            raise ContainerError("tree has too many nodes")
        if pos >= len(data):
            raise ContainerError("truncated tree")
        tag, pos = data[pos], pos + 1
        if tag == INT:
            return read_varint(data, pos)
        count, pos = read_varint(data, pos)
        if count > len(data) - pos:  # every node takes at least one byte
            raise ContainerError("tree count runs past the end")
        if tag == LIST:
            items = []
            for _ in range(count):
                item, pos = node(pos, depth + 1)
                items.append(item)
            return tuple(items), pos
        if tag == MAP:
            items = {}
            for _ in range(count):
                if pos >= len(data) or pos + 1 + data[pos] > len(data) or data[pos] == 0:
                    raise ContainerError("truncated map key")
                raw, pos = data[pos + 1 : pos + 1 + data[pos]], pos + 1 + data[pos]
                try:
                    key = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise ContainerError("map key is not ASCII") from None
                if key in items:
                    raise ContainerError(f"map key {key!r} repeated")
                items[key], pos = node(pos, depth + 1)
            return items, pos
        raise ContainerError(f"unknown tree tag {tag:#04x}")

    tree, end = node(pos, 0)
    if not whole:
        return tree, end
    if end != len(data):
        raise ContainerError("unexpected bytes after the tree")
    return tree


def write_blobs(blobs: list[bytes]) -> bytes:
    """A count, then each blob as (varint length, bytes)."""
    return write_varint(len(blobs)) + b"".join(write_varint(len(b)) + b for b in blobs)


def read_blobs(data: bytes, max_count: int) -> list[bytes]:
    count, pos = read_varint(data, 0)
    if count > max_count:
        raise ContainerError(f"too many strings ({count}; at most {max_count})")
    blobs = []
    for i in range(count):
        length, pos = read_varint(data, pos)
        if length > len(data) - pos:
            raise ContainerError(f"string {i} claims {length} bytes but only {len(data) - pos} remain")
        blobs.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise ContainerError("unexpected bytes after the last string")
    return blobs

"""The compact encodings inside .cml version 2 sections: varints, trees of integers, blob lists."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressml.codec import layout
from compressml.codec.container import ContainerError

ints = st.integers(0, layout.MAX_INT)
keys = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
trees = st.recursive(ints, lambda inner: st.lists(inner, max_size=4).map(tuple) | st.dictionaries(keys, inner, max_size=3), max_leaves=20)


@given(ints)
def test_varints_round_trip(value):
    data = layout.write_varint(value)
    assert layout.read_varint(data, 0) == (value, len(data))


@given(trees)
def test_trees_round_trip(tree):
    assert layout.read_tree(layout.write_tree(tree)) == tree


@given(st.lists(st.binary(max_size=300), max_size=12))
def test_blob_lists_round_trip(blobs):
    assert layout.read_blobs(layout.write_blobs(blobs), 64) == blobs


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_fail_in_one_line(data):
    for read in (lambda: layout.read_tree(data), lambda: layout.read_blobs(data, 16)):
        try:
            read()
        except ContainerError as e:
            assert "\n" not in str(e)


def test_limits_are_checked_before_building():
    deep = bytes([layout.LIST, 1]) * (layout.MAX_DEPTH + 2) + bytes([layout.INT, 0])
    with pytest.raises(ContainerError, match="too deep"):
        layout.read_tree(deep)
    with pytest.raises(ContainerError, match="runs past the end"):
        layout.read_tree(bytes([layout.LIST]) + layout.write_varint(10**6))
    with pytest.raises(ContainerError, match="too many strings"):
        layout.read_blobs(layout.write_varint(1000), 256)
    with pytest.raises(ContainerError, match="varint"):
        layout.read_varint(b"\xff" * 6, 0)
    with pytest.raises(ContainerError, match="after the tree"):
        layout.read_tree(layout.write_tree((1, 2)) + b"\x00")

"""A fast slice of benchmarks/fuzz.py: mutated files of every container family through the decoder in
sandboxed workers (capped memory, a timeout per case); no crash, hang, traceback, out-of-range pixel
or leftover file."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import fuzz


def test_mutations_reach_the_decoders():
    """Most mutations keep a valid checksum, so the decoders (not the container's CRC) must refuse them."""
    import random

    seed = (ROOT / "tests" / "data" / "format_v1" / "lae-q1.cml").read_bytes()
    from compressml.codec import container as cml

    parsed = 0
    for i in range(200):
        try:
            cml.parse(fuzz.mutate(seed, random.Random(i)))
            parsed += 1
        except cml.ContainerError:
            pass
    assert parsed > 60


@pytest.mark.parametrize("family", fuzz.FAMILIES)
def test_fuzzed_files_fail_cleanly_or_decode(family):
    row = fuzz.fuzz_family(family, cases=40 if family != "mllae-lossless" else 16, workers=2, timeout=60)
    assert row["decoded"] + row["refused"] == row["cases"], row["examples"]
    assert row["refused"] > 0

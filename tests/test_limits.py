"""Crafted files that claim huge sizes are refused before anything of that size is allocated: in a
process whose address space is capped (RLIMIT_AS at what torch and the model already map, plus
1.5 GiB), each gets a one-line error and exit code 2, never a MemoryError, a traceback or an OOM kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import ROOT, save_system_checkpoint, smooth_image
from PIL import Image

from compressml.codec import container as cml
from compressml.codec import lae as lae_codec
from compressml.codec import layout
from compressml.codec.files import CodecModel, read_source
from compressml.codec.limits import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS

_HEADER, _CRC = cml._HEADER, cml._CRC


def reheader(data: bytes, **fields) -> bytes:
    """``data`` with header fields replaced (height, width, pad_h, pad_w) and the checksum redone."""
    names = ["magic", "version", "family", "flags", "fingerprint", "height", "width", "channels", "bit_depth", "pad_h", "pad_w", "sections"]
    values = dict(zip(names, _HEADER.unpack_from(data, 0)))
    values.update(fields)
    body = _HEADER.pack(*(values[n] for n in names)) + data[_HEADER.size : -_CRC.size]
    return body + _CRC.pack(zlib.crc32(body))


DRIVER = r"""
import contextlib, io, json, os, resource, sys
from compressml.cli import main
from compressml.codec.files import CodecModel, read_source
for m in json.loads(sys.argv[1]).values():
    CodecModel.load(m)  # the models' own memory is not what is being limited
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (3 << 29), resource.getrlimit(resource.RLIMIT_AS)[1]))
results = {}
for case in json.loads(sys.argv[2]):
    err = io.StringIO()
    os.environ.pop("COMPRESSML_MAX_PIXELS", None)
    os.environ.update(case.get("env", {}))
    with contextlib.redirect_stderr(err):
        try:
            rc = main(["decompress", case["file"], "-m", case["model"], "-o", case["out"]])
        except BaseException as e:  # what must not happen
            rc = repr(e)
    results[case["name"]] = {"rc": rc, "err": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_checkpoint):
    from compressml.systems import MLLAESystem

    torch.manual_seed(0)
    mllae = MLLAESystem(bytes=16, block=16, channels=8, lossless=False, quantizer="ste", bits=2, entropy="rans")
    return {"lae": str(tiny_checkpoint), "mllae": str(save_system_checkpoint(mllae, tmp_path_factory.mktemp("m") / "m.ckpt"))}


def test_crafted_sizes_fail_in_one_line_under_a_memory_limit(models, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(smooth_image(64, 64)).save(src)
    lae = CodecModel.load(models["lae"])
    mllae = CodecModel.load(models["mllae"])
    lae_bytes = lae.encode(read_source(src)).to_bytes()
    mllae_bytes = mllae.encode(read_source(src)).to_bytes()
    parsed = cml.parse(lae_bytes)
    forged_strings = cml.Container(
        **{
            **parsed.__dict__,
            "sections": [
                (k, v) if k != lae_codec.STRINGS else (k, layout.write_varint(2) + layout.write_varint((1 << 32) - 1) + b"\0" * 8)
                for k, v in parsed.sections
            ],
        }
    ).to_bytes()
    files = {
        "lae-60000x60000": reheader(lae_bytes, height=60000, width=60000, pad_h=(-60000) % 64, pad_w=(-60000) % 64),
        "lae-16000x16000": reheader(lae_bytes, height=16000, width=16000, pad_h=0, pad_w=0),
        "lae-2^32-string-bytes": forged_strings,
        "mllae-65520x65520": reheader(mllae_bytes, height=65520, width=65520, pad_h=0, pad_w=0),
    }
    cases = []
    for name, data in files.items():
        path = tmp_path / f"{name}.cml"
        path.write_bytes(data)
        family = name.split("-")[0]
        cases.append(
            {
                "name": name,
                "file": str(path),
                "model": models[family],
                "out": str(tmp_path / f"{name}.png"),
                **({"env": {ENV_MAX_PIXELS: str(1 << 32)}} if family == "mllae" else {}),
            }
        )
    sparse = tmp_path / "huge.cml"  # a file larger than any image within the ceiling needs: not even read
    with open(sparse, "wb") as f:
        f.write(lae_bytes[:64])
        f.truncate(DEFAULT_MAX_PIXELS * 8 + (2 << 20))
    cases.append({"name": "file-of-2GiB", "file": str(sparse), "model": models["lae"], "out": str(tmp_path / "huge.png")})
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(models), json.dumps(cases)],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {
        "lae-60000x60000": "above the limit",
        "lae-16000x16000": "needs about",
        "lae-2^32-string-bytes": "claims 4294967295 bytes",
        "mllae-65520x65520": "needs about",
        "file-of-2GiB": "more than any image",
    }
    for name, phrase in expected.items():
        r = results[name]
        assert r["rc"] == 2, (name, r)
        assert phrase in r["err"] and r["err"].count("\n") == 1 and "Traceback" not in r["err"], (name, r["err"])
        assert not Path(tmp_path / f"{name}.png").exists()

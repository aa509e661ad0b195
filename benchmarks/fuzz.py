"""Fuzzing the decoders: mutated ``.cml`` files of every container family through ``decompress``.

Families (seed files coded from 64x64 crops, plus the committed format v1 files):

``lae-v2-exact``       premade lae-q1, decoding mode exact
``lae-v2-compressai``  premade lae-q1, decoding mode compressai
``lae-v1``             tests/data/format_v1/lae-q1.cml (premade lae-q1)
``mllae-fixed``        a small MLLAE-N (N = 16 bytes per 16x16 block, rANS stage), built here
``mllae-lossless``     premade mllae-lossless (and its v1 file)
``hybrid``             premade red-x2-v1 (the first RED) over a WebP base (and its v1 file)

Each case mutates a seed (bytes flipped, replaced, inserted or cut; header fields or section
lengths changed; the checksum recomputed for all but a few, so the damage reaches the decoders),
and decodes it as ``compressml decompress`` does, into a fresh folder. Cases run in worker processes
forked from a warm parent (imports and models loaded once), each with its address space capped
(``RLIMIT_AS``: what it maps after loading, plus ``--memory`` GiB) and a timeout per case; a worker
that dies or hangs is replaced. Counted per family, all of which must be 0: crashes (a worker killed
by a signal), hangs, tracebacks (an exception other than compressml's one-line errors), out-of-range
pixels (NaN, or outside [0, 1], or a wrong shape) and leftover files (anything but the one output
of a decoded file, nothing after a refusal).

    .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--workers 2]

Writes benchmarks/results/fuzz.json. ``tests/test_fuzz.py`` runs a fast slice of it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREMADE = ROOT / "compressml" / "premade"
V1 = ROOT / "tests" / "data" / "format_v1"
KODAK = (ROOT / ".." / "shared" / "data" / "kodak").resolve()
FAMILIES = ["lae-v2-exact", "lae-v2-compressai", "lae-v1", "mllae-fixed", "mllae-lossless", "hybrid"]
STATUSES = ["decoded", "refused", "crash", "hang", "traceback", "out_of_range", "leftover"]
FAILURES = ["crash", "hang", "traceback", "out_of_range", "leftover"]
HEADER = struct.Struct(">4sBBH16sIIBBHHH")  # compressml.codec.container's header
SECTION = struct.Struct(">BI")


def seed_images() -> list:
    """Two 64x64 crops (a Kodak photo if the shared data is there, else smooth noise) as SourceImages."""
    import numpy as np
    import torch
    from PIL import Image

    from compressml.codec.lae import SourceImage

    crops = []
    photo = KODAK / "kodim23.png"
    if photo.is_file():
        arr = np.asarray(Image.open(photo).convert("RGB"))
        crops = [arr[100:164, 200:264], arr[300:364, 500:564]]
    else:
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    return [SourceImage(rgb=torch.from_numpy(c.copy()).permute(2, 0, 1).float() / 255) for c in crops]


def build_family(name: str):
    """(the model that decodes the family's files, its seed files as bytes)."""
    import torch

    from compressml.codec.files import CodecModel
    from compressml.codec.hybrid import HybridCodec
    from compressml.codec.lae import weights_fingerprint
    from compressml.models.mllae import MLLAE

    images = seed_images()
    if name.startswith("lae-v2"):
        model = CodecModel.load(PREMADE / "lae-q1")
        coder = model.with_decoding_mode(name.rsplit("-", 1)[1])
        return model, [coder.encode(im).to_bytes() for im in images]
    if name == "lae-v1":
        return CodecModel.load(PREMADE / "lae-q1"), [(V1 / "lae-q1.cml").read_bytes()]
    if name == "mllae-fixed":
        torch.manual_seed(0)
        net = MLLAE(bytes=16, block=16, channels=8, residual_channels=8).eval()
        model = CodecModel(net=net, fingerprint=weights_fingerprint(net), source="fuzz", family="mllae", options={"entropy": "rans"})
        return model, [model.encode(im).to_bytes() for im in images]
    if name == "mllae-lossless":
        model = CodecModel.load(PREMADE / "mllae-lossless")
        return model, [model.encode(images[0]).to_bytes(), (V1 / "mllae-lossless.cml").read_bytes()]
    if name == "hybrid":
        coder = HybridCodec.load(str(PREMADE / "red-x2-v1"), "webp", 50)
        return HybridCodec.load(str(PREMADE / "red-x2-v1")), [coder.encode(images[0]).to_bytes(), (V1 / "hybrid-webp.cml").read_bytes()]
    raise SystemExit(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")


def _recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """One damaged file from ``seed`` (see the module docstring)."""
    body = bytearray(seed[:-4])
    kind = rng.random()
    if kind < 0.45:  # a few bytes after the header flipped or replaced
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            i = rng.randrange(HEADER.size, len(body)) if len(body) > HEADER.size else rng.randrange(len(body))
            body[i] = rng.randrange(256) if rng.random() < 0.5 else body[i] ^ (1 << rng.randrange(8))
    elif kind < 0.60:  # a header field
        fields = list(HEADER.unpack_from(body, 0))
        i = rng.choice([1, 2, 3, 5, 6, 7, 8, 9, 10, 11])
        choices = {
            5: [0, 1, 63, 65, 4096, 65535, 60000],
            6: [0, 1, 63, 65, 4096, 65535, 60000],
            7: [0, 1, 2, 3, 4, 5, 255],
            8: [0, 1, 8, 16, 255],
            9: [0, 1, 63, 65535],
            10: [0, 1, 63, 65535],
            11: [0, 1, 2, 3, 1024, 65535],
        }
        fields[i] = rng.choice(choices.get(i, [0, 1, 2, 3, 255]))
        if i in (1,):
            fields[i] = min(fields[i], 255)
        body[: HEADER.size] = HEADER.pack(*fields)
    elif kind < 0.72:  # a section's length or kind
        pos, offsets = HEADER.size, []
        while pos + SECTION.size <= len(body):
            k, n = SECTION.unpack_from(body, pos)
            offsets.append(pos)
            pos += SECTION.size + n
        if offsets:
            at = rng.choice(offsets)
            k, n = SECTION.unpack_from(body, at)
            if rng.random() < 0.7:
                n = rng.choice([0, 1, n - 1, n + 1, 2**31, 2**32 - 1, rng.randrange(2**32)]) % 2**32
            else:
                k = rng.randrange(256)
            body[at : at + SECTION.size] = SECTION.pack(k, n)
    elif kind < 0.84:  # cut or grown
        if rng.random() < 0.5:
            del body[rng.randrange(HEADER.size, len(body) + 1) :]
        else:
            at = rng.randrange(HEADER.size, len(body) + 1)
            body[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64, 1000])))
    elif kind < 0.97:  # inside the largest section: a run of random bytes
        if len(body) > HEADER.size + 8:
            at = rng.randrange(HEADER.size, len(body) - 4)
            run = rng.choice([4, 32, 256])
            body[at : at + run] = bytes(rng.randrange(256) for _ in range(min(run, len(body) - at)))
    else:  # a bit flipped, checksum left as it was: the container must notice
        i = rng.randrange(len(body))
        body[i] ^= 1 << rng.randrange(8)
        return bytes(body) + seed[-4:]
    return _recrc(bytes(body))


def run_case(model, data: bytes, folder: Path) -> tuple[str, str]:
    """Decode ``data`` as ``compressml decompress`` does; (status, detail)."""
    import torch

    from compressml.codec.files import decompress_file
    from compressml.errors import CompressMLError

    src, dst = folder / "in.cml", folder / "out" / "in.png"
    src.write_bytes(data)
    seen = {}
    decode = model.decode

    def checked(container):
        image = decode(container)
        seen["image"], seen["size"] = image, (container.height, container.width)
        return image

    model.decode = checked
    try:
        decompress_file(model, src, dst)
        status, detail = "decoded", ""
        rgb = seen["image"].rgb
        if not torch.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1 or tuple(rgb.shape[-2:]) != seen["size"]:
            status, detail = "out_of_range", f"{tuple(rgb.shape)} [{float(rgb.min())}, {float(rgb.max())}]"
    except CompressMLError as e:
        status, detail = "refused", str(e)
        if "\n" in detail.strip():
            status = "traceback"
    except Exception as e:
        import traceback

        status, detail = "traceback", "".join(traceback.format_exception_only(type(e), e)).strip()[-500:]
    finally:
        del model.decode
    left = sorted(p.name for p in (folder / "out").iterdir()) if (folder / "out").is_dir() else []
    expected = ["in.png"] if status == "decoded" else []
    if left != expected and status in ("decoded", "refused"):
        status, detail = "leftover", f"{left}"
    shutil.rmtree(folder / "out", ignore_errors=True)
    return status, detail


def _worker(conn, family: str, seeds: list[bytes], model, memory_gib: float) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + int(memory_gib * 2**30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    folder = Path(tempfile.mkdtemp(prefix="compressml-fuzz-"))
    try:
        while True:
            index = conn.recv()
            if index is None:
                return
            rng = random.Random(f"{family}:{index}")
            data = mutate(seeds[rng.randrange(len(seeds))], rng)
            conn.send(run_case(model, data, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fuzz_family(family: str, cases: int, workers: int = 2, timeout: float = 30.0, memory_gib: float = 2.0, progress: bool = False) -> dict:
    """Counts of each status over ``cases`` mutated files of ``family``, and a few examples of failures."""
    model, seeds = build_family(family)
    ctx = mp.get_context("fork")
    counts = dict.fromkeys(STATUSES, 0)
    examples: list[dict] = []
    pending = list(range(cases))
    pool: list[dict] = []

    def spawn() -> dict:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, family, seeds, model, memory_gib), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "case": None, "since": 0.0}

    def record(status: str, case: int, detail: str) -> None:
        counts[status] += 1
        if status in FAILURES and len(examples) < 20:
            examples.append({"case": case, "status": status, "detail": detail})

    started = time.time()
    pool = [spawn() for _ in range(max(1, workers))]
    try:
        while pending or any(w["case"] is not None for w in pool):
            for w in pool:
                if w["case"] is None and pending:
                    w["case"], w["since"] = pending.pop(0), time.time()
                    w["conn"].send(w["case"])
            for i, w in enumerate(pool):
                if w["case"] is None:
                    continue
                if w["conn"].poll(0.005):
                    try:
                        status, detail = w["conn"].recv()
                    except EOFError:
                        w["proc"].join(5)
                        record("crash", w["case"], f"worker died (exit {w['proc'].exitcode})")
                        pool[i] = spawn()
                        continue
                    record(status, w["case"], detail)
                    w["case"] = None
                elif not w["proc"].is_alive():
                    record("crash", w["case"], f"worker died (exit {w['proc'].exitcode})")
                    pool[i] = spawn()
                elif time.time() - w["since"] > timeout:
                    w["proc"].kill()
                    w["proc"].join()
                    record("hang", w["case"], f"no answer in {timeout} s")
                    pool[i] = spawn()
            done = cases - len(pending)
            if progress and done and done % 1000 == 0 and all(w["case"] is None for w in pool):
                print(f"  {family}: {done}/{cases}", flush=True)
    finally:
        for w in pool:
            try:
                w["conn"].send(None)
            except (BrokenPipeError, OSError):
                pass
            w["proc"].join(2)
            if w["proc"].is_alive():
                w["proc"].kill()
    return {"family": family, "cases": cases, **counts, "seconds": round(time.time() - started, 1), "examples": examples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000, help="mutated files per family")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--memory", type=float, default=2.0, help="GiB of address space per worker beyond its start")
    parser.add_argument("--out", default="fuzz.json", help="file name in benchmarks/results/")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_common import RESULTS, machine_info, write_json

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for family in args.families:
        row = fuzz_family(family, args.cases, args.workers, args.timeout, args.memory, progress=True)
        rows.append(row)
        print(
            f"{family:<18} {row['cases']:>6} cases in {row['seconds']:>7.1f} s: decoded {row['decoded']:>5}, refused "
            f"{row['refused']:>5}; crashes {row['crash']}, hangs {row['hang']}, tracebacks {row['traceback']}, "
            f"out of range {row['out_of_range']}, leftover files {row['leftover']}",
            flush=True,
        )
        for ex in row["examples"][:3]:
            print(f"    case {ex['case']}: {ex['status']}: {ex['detail'][:200]}")
        out = RESULTS / args.out  # after every family: a long run stopped early keeps what it measured
        write_json({"machine": machine_info(args.workers), "rows": rows}, out)
    print(f"wrote {out.relative_to(ROOT)}")
    return 1 if any(r[s] for r in rows for s in FAILURES) else 0


if __name__ == "__main__":
    raise SystemExit(main())

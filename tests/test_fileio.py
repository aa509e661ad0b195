"""Outputs as image tools write them: the umask's permissions, whole files only, no .part left by a
killed run, and two writers of one output never mix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from compressml.errors import CompressMLError
from compressml.fileio import _HOST, atomic_write, part_name, remove_stale_parts


@pytest.fixture
def umask():
    def set_to(value: int) -> None:
        os.umask(value)

    before = os.umask(0o022)
    os.umask(before)
    yield set_to
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_take_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    out = tmp_path / "a.cml"
    atomic_write(out, lambda tmp: tmp.write_bytes(b"x"), force=False)
    assert _mode(out) == expected
    atomic_write(out, lambda tmp: tmp.write_bytes(b"y"), force=True)
    assert _mode(out) == expected and out.read_bytes() == b"y"


def test_cli_outputs_are_readable_by_the_group_and_others(checkpoint, photo, tmp_path, umask):
    from compressml.cli import main

    umask(0o022)
    out = tmp_path / "out"
    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(out / "p.cml")]) == 0
    assert main(["decompress", str(out / "p.cml"), "-m", str(checkpoint), "-o", str(out / "p.png")]) == 0
    assert _mode(out / "p.cml") == 0o644 and _mode(out / "p.png") == 0o644
    assert sorted(p.name for p in out.iterdir()) == ["p.cml", "p.png"]


def test_parts_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / f".photo.cml.{_HOST}.{_dead_pid()}.0123abcd.part"
    dead.write_bytes(b"half a file")
    dead_folder = tmp_path / f".bundle.{_HOST}.{_dead_pid()}.89abcdef.part"
    dead_folder.mkdir()
    (dead_folder / "weights.safetensors").write_bytes(b"half")
    live = tmp_path / part_name("other.cml")  # this process: still writing it
    live.write_bytes(b"in progress")
    foreign = tmp_path / f".photo.cml.some-other-host.{_dead_pid()}.0123abcd.part"  # another machine's (shared disk)
    foreign.write_bytes(b"theirs")
    atomic_write(tmp_path / "photo.cml", lambda tmp: tmp.write_bytes(b"whole"), force=False)
    assert not dead.exists() and not dead_folder.exists()
    assert live.exists() and foreign.exists()
    assert (tmp_path / "photo.cml").read_bytes() == b"whole"
    assert remove_stale_parts(tmp_path) == []


def test_a_killed_compress_leaves_nothing_that_survives_the_next_run(checkpoint, photo, tmp_path):
    """SIGKILL in the middle of writing (the write is made to hang), then a normal run."""
    code = (
        "import sys, time, compressml.fileio as f\n"
        "def hang(tmp): tmp.write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n"
        "f.atomic_write(f.Path(sys.argv[1]), hang, force=False)\n"
    )
    target = tmp_path / "out" / "p.cml"
    target.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert [p for p in target.parent.iterdir() if p.name.endswith(".part")] and not target.exists()
    from compressml.cli import main

    assert main(["compress", str(photo), "-m", str(checkpoint), "-o", str(target)]) == 0
    assert [p.name for p in target.parent.iterdir()] == ["p.cml"]


def test_a_second_writer_of_the_same_output_fails_without_mixing(tmp_path):
    out = tmp_path / "a.cml"

    def slow_write(tmp):
        tmp.write_bytes(b"A" * 1000)
        out.write_bytes(b"B" * 10)  # another process finished first

    with pytest.raises(CompressMLError, match="appeared while it was being written"):
        atomic_write(out, slow_write, force=False)
    assert out.read_bytes() == b"B" * 10
    assert [p.name for p in tmp_path.iterdir()] == ["a.cml"]


def test_concurrent_forced_writers_leave_one_whole_file(tmp_path):
    out = tmp_path / "a.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(out, lambda tmp, p=p: tmp.write_bytes(p), True)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]

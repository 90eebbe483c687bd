"""Atomic writes: a failed or killed write never leaves a truncated file where a good one is expected."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pneumoscan.paths import atomic_write, atomic_write_json, atomic_write_text

OLD = b"the previous complete content\n" * 1000
CHUNK_MB, CHUNKS = 1, 48

# A child process that writes a large file through atomic_write, slowly enough to be killed midway.
WRITER = f"""
import sys, time
from pneumoscan.paths import atomic_write

def write(tmp):
    with open(tmp, "wb") as fh:
        for i in range({CHUNKS}):
            fh.write(bytes([i % 251]) * ({CHUNK_MB} << 20))
            fh.flush()
            time.sleep(0.01)

atomic_write(sys.argv[1], write)
"""


def expected_new_content_md5() -> str:
    h = hashlib.md5()
    for i in range(CHUNKS):
        h.update(bytes([i % 251]) * (CHUNK_MB << 20))
    return h.hexdigest()


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_bytes(OLD)

    def half_then_fail(tmp):
        tmp.write_bytes(b'{"accuracy": 0.9')
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == OLD
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_helpers_write_complete_files_with_normal_permissions(tmp_path):
    atomic_write_json(tmp_path / "deep" / "m.json", {"b": 1, "a": [0.5]})
    assert json.loads((tmp_path / "deep" / "m.json").read_text()) == {"a": [0.5], "b": 1}
    atomic_write_text(tmp_path / "deep" / "m.json", "replaced\n")
    assert (tmp_path / "deep" / "m.json").read_text() == "replaced\n"
    assert sorted(os.listdir(tmp_path / "deep")) == ["m.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "deep" / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask


def start_writer(target) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target)])


def wait_for_temp_file(folder, at_least: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = [f for f in folder.iterdir() if f.name.startswith(".tmp-")]
        if temps and temps[0].stat().st_size >= at_least:
            return
        assert proc.poll() is None, "the writer finished before it could be killed"
        time.sleep(0.005)
    raise AssertionError("the writer never started writing")


@pytest.mark.parametrize("kill_after_mb", [0, 5, 40])
def test_sigkill_midway_never_leaves_a_truncated_target(tmp_path, kill_after_mb):
    target = tmp_path / "model.keras"
    target.write_bytes(OLD)
    proc = start_writer(target)
    try:
        wait_for_temp_file(tmp_path, kill_after_mb << 20, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == OLD  # the old complete file, untouched


def test_an_uninterrupted_writer_replaces_the_target_whole(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(OLD)
    proc = start_writer(target)
    assert proc.wait(timeout=60) == 0
    assert hashlib.md5(target.read_bytes()).hexdigest() == expected_new_content_md5()
    assert os.listdir(tmp_path) == ["model.keras"]

"""Atomic writes: leftovers of a killed writer are cleaned up; written files follow the umask."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from research import io as rio

_WRITER = textwrap.dedent("""
    import sys
    from research.io import atomic_write_bytes
    data = b"x" * (8 << 20)
    while True:
        atomic_write_bytes(sys.argv[1], data)
""")


def _temporaries(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _killed_mid_write(folder):
    """Run a writer in a loop and SIGKILL it while a temporary exists; return the leftovers."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder / "big.bin")], env=env)
        try:
            deadline = time.time() + 60
            while not _temporaries(folder) and time.time() < deadline:
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        left = _temporaries(folder)
        if left:
            return left
    pytest.fail("the writer was never caught mid-write")


def test_killed_writer_leaves_temporary_that_cleanup_removes(tmp_path):
    left = _killed_mid_write(tmp_path)
    # Files that are not our temporaries, and a live writer's temporary, must survive.
    keep = ["big.bin", "notes.tmp", ".hidden.tmp", "data.npz"]
    for name in keep[1:]:
        (tmp_path / name).write_bytes(b"keep")
    live = os.path.basename(rio._temp_path(str(tmp_path / "other.bin")))
    (tmp_path / live).write_bytes(b"being written")
    keep.append(live)
    keep = [k for k in keep if (tmp_path / k).exists()]

    removed = rio.remove_stale_temporaries(str(tmp_path))

    assert sorted(os.path.basename(p) for p in removed) == left
    assert sorted(os.listdir(tmp_path)) == sorted(keep)


def test_old_temporaries_of_unknown_writers_removed_only_when_stale(tmp_path):
    legacy = tmp_path / ".plane.npz.ab3_x9zq.tmp"  # tempfile.mkstemp's old name for ours
    legacy.write_bytes(b"old")
    assert rio.remove_stale_temporaries(str(tmp_path)) == []
    old = time.time() - rio.STALE_AFTER_S - 10
    os.utime(legacy, (old, old))
    assert rio.remove_stale_temporaries(str(tmp_path)) == [str(legacy)]
    assert rio.remove_stale_temporaries(str(tmp_path / "missing")) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        rio.atomic_write_text(str(tmp_path / "a.txt"), "hello")
        rio.atomic_write_json(str(tmp_path / "sub" / "b.json"), {"a": 1})
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "sub" / "b.json").st_mode & 0o777 == mode
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert _temporaries(tmp_path) == []

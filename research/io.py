"""Atomic file writes (a temporary file in the same folder, then a rename) and content fingerprints.

A killed process therefore leaves either the old file or the new one, never half of one. What a
SIGKILL can leave behind is the temporary file itself, named `.<name>.<host>.<pid>.<random>.tmp`
next to its target; `remove_stale_temporaries(folder)` deletes such leftovers. Call it wherever a
folder is (re)opened for writing (a run folder when training resumes, a landscape output folder,
the folder of a surface file); `save_figure` already calls it for figure folders.

Written files get the permissions an ordinary `open(path, "w")` would give them, 0666 minus the
process's umask (e.g. 0644 under umask 022), not `tempfile.mkstemp`'s private 0600.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import socket
import time
import zlib
from typing import Any

import jax
import numpy as np

# A write that has not touched its temporary for this long is taken as abandoned even when we
# cannot tell whether its writer lives (another host on a shared file system, or a temporary
# from before the pid was part of the name). One atomic write takes seconds, not an hour.
STALE_AFTER_S = 3600.0

# `.<name>.<host>.<pid>.<random>.tmp`: host is 8 hex digits of the host name's CRC32, so a pid
# is only checked on the machine that owns it.
_TEMP_NAME = re.compile(r"^\..+\.([0-9a-f]{8})\.(\d+)\.[0-9a-f]{12}\.tmp$")
# The names `tempfile.mkstemp` gave our temporaries before: `.<name>.<8 random chars>.tmp`.
_LEGACY_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"


def _temp_path(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    name = f".{base}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    return os.path.join(folder, name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:  # no way to tell (e.g. a platform without signal 0): assume alive
        return True
    return True


def is_writer() -> bool:
    """Whether this process writes files: always, except in a multi-process run (process 0 only).

    Every process of a `jax.distributed` run computes the same numbers, so one writes them. The
    check does not start a JAX backend before `jax.distributed.initialize()` has run.
    """
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write bytes to `path` atomically (creating its folder).

    The bytes go to a temporary file in the same folder, which is then renamed over `path`, so
    readers and a killed writer see either the old file or the new one. In a multi-process run
    only process 0 writes (`is_writer`); the others return at once.

    Args:
        path: the file to write.
        data: its new content.
    """
    if not is_writer():
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = _temp_path(path)
        try:
            # Mode 0666 through os.open lets the kernel apply the umask itself: reading the umask
            # means setting it, which races with other threads creating files.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Delete temporaries that killed `atomic_write_bytes` calls left in `folder`.

    Only files named like our temporaries are considered, and one is deleted only when its
    writer is certainly gone: its pid (part of the name) no longer runs on this host, or it has
    not been modified for `stale_after_s` (temporaries of other hosts, or from older versions
    whose names hold no pid). A concurrent writer's temporary is therefore left alone. Missing
    folders and files that vanish meanwhile are fine. Sub-folders are not searched.

    Call it where a folder is (re)opened for writing, e.g. at the start of a resumed training
    run on the run folder and its checkpoint folders, or before writing a surface file on that
    file's folder.

    Args:
        folder: the folder to clean.
        stale_after_s: age (seconds since the last modification) after which any of our
            temporaries counts as abandoned.

    Returns:
        The paths deleted.
    """
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    host, now, removed = _host_tag(), time.time(), []
    for name in names:
        m = _TEMP_NAME.match(name)
        if m is None and _LEGACY_TEMP_NAME.match(name) is None:
            continue
        path = os.path.join(folder, name)
        try:
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            writer_gone = m is not None and m.group(1) == host and not _pid_alive(int(m.group(2)))
            if writer_gone or now - os.path.getmtime(path) > stale_after_s:
                os.unlink(path)
                removed.append(path)
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
    return removed


def atomic_write_text(path: str, text: str) -> None:
    """Write text (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write an object as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
    """Save arrays as an uncompressed .npz at `path` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def fingerprint(tree: Any) -> str:
    """A short, stable hash of a pytree's paths, shapes, dtypes and values.

    Args:
        tree: any pytree of arrays (parameters, data, directions).

    Returns:
        16 hex characters.
    """
    h = hashlib.blake2b(digest_size=8)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in flat:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()

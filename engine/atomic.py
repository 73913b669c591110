"""Atomic writes: every output goes to a unique temporary name beside its target, is flushed to
disk, and is renamed into place, so a reader sees the complete old file, the complete new one, or
no file; never half of one.

- :func:`write_bytes`, :func:`write_text`, :func:`write_json`: whole files from memory;
- :func:`atomic_path`: a temporary path for a library that writes files itself (pyarrow,
  safetensors, matplotlib), renamed into place when the block succeeds;
- :func:`atomic_directory`: the same for a directory (a saved model): it is built under a
  temporary name and swapped in; the old directory is removed only after the new one is in place.

Temporary names carry the process id and a random part, so two writers never share one; a
temporary file left by a killed process starts with ``.`` and ends in ``.tmp``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A fresh, unused path beside ``path`` (created empty, so no other writer can take it)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds it is flushed and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (unencodable text fails before anything is replaced)."""
    return write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN, and a reader
    other than Python's would reject the file."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``value`` as JSON atomically; NaN and infinities become null (:func:`json_safe`)."""
    return write_text(path, json.dumps(json_safe(value), indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block succeeds it replaces ``path``.

    An existing ``path`` is first renamed aside and removed only once the new directory is in
    place, so at every instant ``path`` is the complete old directory, the complete new one, or
    (for the moment between two renames) absent. On an exception the temporary directory is
    removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["atomic_directory", "atomic_path", "json_safe", "sha256_file", "temporary_name", "write_bytes", "write_json",
           "write_text"]

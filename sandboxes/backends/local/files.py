"""Confined file I/O: the worker reads and writes a sandbox's home without ever leaving it.

Files are read and written from the worker, never through the sandbox: each path component
is opened with ``O_NOFOLLOW`` relative to its parent's descriptor, so a link planted in the
sandbox can never make the worker touch a host file. Symlinks are refused, not followed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from sandboxes.backends.base import (
    SANDBOX_HOME,
    BackendError,
    FileEntry,
    SandboxFileNotFound,
    SandboxNotFound,
    iter_chunks,
)
from sandboxes.backends.local.store import write_all

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_CHUNK = 1024 * 1024


class Owner:
    """Who files made by the worker belong to on the host (None: the worker itself)."""

    def __init__(self, uid: int | None, gid: int | None) -> None:
        self.uid = uid
        self.gid = gid if gid is not None else uid

    def chown(self, fd: int) -> None:
        if self.uid is not None:
            os.fchown(fd, self.uid, self.gid if self.gid is not None else self.uid)


def write_file(home: Path, owner: Owner, path: str, data: bytes | BinaryIO) -> None:
    parts = home_parts(path)
    if not parts:
        raise BackendError(f"{path}: is a directory")
    with open_home(home) as home_fd:
        dir_fd = walk(home_fd, parts[:-1], path, create=owner)
        try:
            # Written to a fresh name and renamed over the target: a link planted at the
            # target is replaced, never followed, and readers never see half a file.
            tmp_name = f".airlock-upload-{secrets.token_hex(8)}"
            fd = os.open(
                tmp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dir_fd,
            )
            try:
                try:
                    for chunk in iter_chunks(data, _WRITE_CHUNK):
                        write_all(fd, chunk)
                    os.fchmod(fd, 0o644)
                    owner.chown(fd)
                finally:
                    os.close(fd)
                os.replace(tmp_name, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name, dir_fd=dir_fd)
                raise
        except IsADirectoryError:
            raise BackendError(f"{path}: is a directory") from None
        except OSError as exc:
            raise BackendError(f"{path}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)


def read_file(home: Path, path: str, chunk_size: int) -> Iterator[bytes]:
    parts = home_parts(path)
    if not parts:
        raise BackendError(f"{path}: is a directory")
    with open_home(home) as home_fd:
        dir_fd = walk(home_fd, parts[:-1], path, create=None)
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang the worker in open().
            fd = os.open(
                parts[-1],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=dir_fd,
            )
        except FileNotFoundError:
            raise SandboxFileNotFound(f"{path}: no such file") from None
        except OSError as exc:
            raise path_error(path, exc) from None
        finally:
            os.close(dir_fd)
    try:
        # Checked on the descriptor before wrapping it: fdopen refuses a directory.
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BackendError(f"{path}: is a directory")
        if not stat.S_ISREG(mode):
            raise BackendError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except BaseException:
        os.close(fd)
        raise
    # A file object, so the descriptor is closed even if the iterator is never started.
    return _stream(os.fdopen(fd, "rb", buffering=0), chunk_size)


def list_files(home: Path, path: str) -> list[FileEntry]:
    parts = home_parts(path)
    base = posixpath.join(SANDBOX_HOME, *parts)
    with open_home(home) as home_fd:
        dir_fd = walk(home_fd, parts, path, create=None)
    entries = []
    try:
        with os.scandir(dir_fd) as listing:
            for entry in listing:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed by the sandbox meanwhile
                    continue
                kind = _entry_type(info.st_mode)
                entries.append(
                    FileEntry(
                        name=entry.name,
                        path=posixpath.join(base, entry.name),
                        type=kind,
                        size=info.st_size if kind == "file" else None,
                        mode=stat.S_IMODE(info.st_mode),
                    )
                )
    finally:
        os.close(dir_fd)
    return sorted(entries, key=lambda entry: entry.name)


@contextlib.contextmanager
def open_home(home: Path) -> Iterator[int]:
    try:
        fd = os.open(home, _DIR_FLAGS)
    except FileNotFoundError:
        raise SandboxNotFound(f"sandbox {home.parent.name} not found") from None
    try:
        yield fd
    finally:
        os.close(fd)


def home_parts(path: str) -> list[str]:
    """The components of ``path`` below /home/user; anything outside it is refused."""
    if not isinstance(path, str) or "\0" in path or not path.startswith("/"):
        raise BackendError(f"path must be an absolute path under {SANDBOX_HOME}, got {path!r}")
    parts = [part for part in posixpath.normpath(path).split("/") if part]
    home = [part for part in SANDBOX_HOME.split("/") if part]
    if parts[: len(home)] != home:
        raise BackendError(f"path must be under {SANDBOX_HOME}, got {path!r}")
    return parts[len(home) :]


def walk(home_fd: int, parts: list[str], path: str, *, create: Owner | None) -> int:
    """Open the directory ``parts`` below the home, one component at a time, never following
    a symlink. With ``create`` (who new directories belong to) missing ones are made.
    Returns a new descriptor the caller closes."""
    fd = os.dup(home_fd)
    try:
        for part in parts:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise SandboxFileNotFound(f"{path}: no such file or directory") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(next_fd, 0o755)  # whatever the worker's umask
                create.chown(next_fd)
            os.close(fd)
            fd = next_fd
    except OSError as exc:
        os.close(fd)
        raise path_error(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def path_error(path: str, exc: OSError) -> BackendError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return BackendError(
            f"{path}: a component is a symlink or not a directory (links are not followed)"
        )
    if isinstance(exc, FileNotFoundError):
        return SandboxFileNotFound(f"{path}: no such file or directory")
    return BackendError(f"{path}: {exc.strerror}")


def _entry_type(mode: int) -> Literal["file", "dir", "symlink", "other"]:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _stream(file: io.FileIO, chunk_size: int) -> Iterator[bytes]:
    with file:
        fd = file.fileno()
        while chunk := os.read(fd, chunk_size):
            yield chunk

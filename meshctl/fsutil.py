"""Files that are never half-written: atomic replace, directory locks, private modes.

Every write goes to a temporary file in the same directory, is flushed to disk, gets its final mode,
then replaces the target in one rename. A process killed at any point leaves the old file or the new
one, never a mix. OS errors become one-line MeshErrors that name the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from meshctl import const
from meshctl.errors import InvalidInput, MeshError, PermissionProblem

# Errors about the file system rather than the file: exit code PERMISSION ("cannot be read or written").
FILE_SYSTEM_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def os_error(exc: OSError, path: Path | str, doing: str) -> MeshError:
    """Translate an OSError into the one line a user can act on."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionProblem(
            f"cannot {doing} {path}: permission denied",
            "check the owner and mode of the mesh home, or point MESHCTL_HOME at a writable directory",
        )
    if exc.errno == errno.EROFS:
        return PermissionProblem(f"cannot {doing} {path}: read-only file system",
                                 "remount it read-write, or point MESHCTL_HOME at a writable directory")
    if exc.errno == errno.ENOSPC:
        return PermissionProblem(f"cannot {doing} {path}: no space left on device", "free some disk space and retry")
    if exc.errno == errno.EDQUOT:
        return PermissionProblem(f"cannot {doing} {path}: disk quota exceeded", "free some disk space and retry")
    return MeshError(f"cannot {doing} {path}: {exc.strerror or exc}")



def own_by_proxy(path: Path) -> None:
    """Give a file of a proxy's directory to the proxy uid when meshctl runs as root: the sidecar, which never
    runs as root, must read its 0600 key (Pilot writes these files, Citadel rotates the certificates in them)."""
    if os.geteuid() == 0:
        try:
            os.chown(path, const.PROXY_UID, const.PROXY_UID)
        except OSError as exc:
            raise os_error(exc, path, "chown") from exc


def ensure_dir(path: Path, mode: int = 0o700) -> bool:
    """Create `path` (and parents) with `mode`; fix the mode if it exists. Returns True if anything changed."""
    try:
        if path.is_dir():
            if path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
                return True
            return False
        path.mkdir(parents=True, mode=mode)
        path.chmod(mode)  # mkdir's mode is masked by the umask
        return True
    except OSError as exc:
        raise os_error(exc, path, "create directory") from exc


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` so readers see the old content or the new, never a part.

    `durable` also flushes to disk, so the new content survives a power cut; files derived from others
    (snapshots, recompiled on every push) skip it: the rename alone keeps readers safe.
    """
    payload = data.encode() if isinstance(data, str) else data
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(payload)
            if durable:
                tmp.flush()
                os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        if durable:
            _fsync_dir(path.parent)
    except OSError as exc:
        raise os_error(exc, path, "write") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def user_file_mode(target: Path, sources: Iterable[Path] = ()) -> int:
    """The mode to write a user's file with (inject's and uninject's output): the target's own when it exists,
    so a rewrite keeps it; else the narrowest of the files it was made from, so a private compose file's output
    stays private; else 0o644."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        pass
    mode = None
    for source in sources:
        try:
            mode = stat.S_IMODE(source.stat().st_mode) & 0o666 & (0o777 if mode is None else mode)
        except OSError:
            continue
    return 0o644 if mode is None else mode


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (flock: released by the kernel if the holder dies)."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise os_error(exc, lock_file, "lock") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise os_error(exc, path, "read") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte {exc.start})", "give a text file") from None


def read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"<stdin> is not UTF-8 text (byte {exc.start})", "pipe a text file") from None

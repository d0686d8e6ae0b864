"""The config store: a numbered series of immutable revisions and a pointer to the current one.

    config/
      .lock                 flock held by every writer
      current               the current revision number (replaced atomically)
      revisions/000042.json {"revision": 42, "time": ..., "message": ..., "resources": [...]}

A write takes the lock, reads the current revision, writes the next one as a new file, then moves the
pointer. A writer killed at any point leaves the pointer on the last complete revision, so readers never
see a partial write, and concurrent writers are serialised rather than lost. A revision file past the
pointer (a writer killed before it moved the pointer) was never committed: it is not history, and the
next write replaces it, as it removes the temporary files a killed writer left. Whole revisions are small
(tens of resources) and make history and rollback a matter of pointing back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.errors import InvalidInput, UsageError
from meshctl.fsutil import atomic_write, ensure_dir, locked, os_error, read_text

Resource = dict[str, Any]
HISTORY_KEPT = 200


@dataclass(frozen=True)
class Revision:
    revision: int
    time: float
    message: str
    resources: list[Resource] = field(default_factory=list)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _current_file(self) -> Path:
        return self.root / "current"

    @property
    def _revisions_dir(self) -> Path:
        return self.root / "revisions"

    def _revision_file(self, number: int) -> Path:
        return self._revisions_dir / f"{number:06d}.json"

    def exists(self) -> bool:
        return self._current_file.is_file()

    def init(self, now: float) -> bool:
        """Create an empty store at revision 0. Returns False if one is already there."""
        if self.exists():
            return False
        ensure_dir(self.root, 0o700)
        ensure_dir(self._revisions_dir, 0o700)
        with locked(self.root / ".lock"):
            if self.exists():
                return False
            self._write_revision(Revision(0, now, "empty store created by meshctl install"))
            atomic_write(self._current_file, "0\n", mode=0o600)
        return True

    def current_number(self) -> int:
        text = read_text(self._current_file).strip()
        if not text.isdigit():
            raise InvalidInput(f"{self._current_file} is damaged (holds {text[:20]!r})",
                               "point it at a file in revisions/ or run `meshctl rollback`")
        return int(text)

    def read(self, number: int | None = None) -> Revision:
        current = self.current_number()
        if number is not None and number > current:  # written by a writer killed before it committed it
            raise UsageError(f"revision {number} does not exist", "see `meshctl history`")
        return self._load(current if number is None else number)

    def _load(self, number: int) -> Revision:
        path = self._revision_file(number)
        if not path.is_file():
            raise UsageError(f"revision {number} does not exist", "see `meshctl history`")
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path} is damaged: {exc}", "roll back to an earlier revision") from exc
        return Revision(**data)

    def commit(self, change: Callable[[list[Resource]], list[Resource]], message: str, now: float) -> Revision:
        """Apply `change` to the current resources under the lock and store the result as a new revision.

        `change` validates and may raise; then nothing is written. A change that changes nothing writes
        nothing either and returns the current revision.
        """
        with locked(self.root / ".lock"):
            current = self.read()
            resources = change(json.loads(json.dumps(current.resources)))  # a deep copy to change freely
            if resources == current.resources:
                return current
            new = Revision(current.revision + 1, now, message, resources)
            self._write_revision(new)
            try:
                atomic_write(self._current_file, f"{new.revision}\n", mode=0o600)
            except BaseException:  # e.g. the disk filled up between the two writes: leave no uncommitted revision
                with contextlib.suppress(Exception):
                    if self.current_number() != new.revision:
                        self._revision_file(new.revision).unlink()
                raise
            self._prune(new.revision)
        return new

    def history(self) -> list[Revision]:
        """Every committed revision still kept, oldest first."""
        current = self.current_number()
        try:
            numbers = sorted(int(f.stem) for f in self._revisions_dir.glob("*.json") if f.stem.isdigit())
        except OSError as exc:
            raise os_error(exc, self._revisions_dir, "list") from exc
        return [self._load(n) for n in numbers if n <= current]

    def _write_revision(self, rev: Revision) -> None:
        body = {"revision": rev.revision, "time": rev.time, "message": rev.message, "resources": rev.resources}
        atomic_write(self._revision_file(rev.revision), json.dumps(body, indent=1, sort_keys=True), mode=0o600)

    def _prune(self, newest: int) -> None:
        """Drop revisions past HISTORY_KEPT, and temporary files of writers killed mid-write (under the lock,
        so they cannot belong to a live writer: every writer here holds it). Housekeeping: the revision is
        committed already, so a failure here is left for the next writer."""
        with contextlib.suppress(OSError):
            for path in self._revisions_dir.glob("*.json"):
                if path.stem.isdigit() and int(path.stem) <= newest - HISTORY_KEPT:
                    path.unlink(missing_ok=True)
            for directory in (self.root, self._revisions_dir):
                for path in directory.glob(".*.tmp"):
                    path.unlink(missing_ok=True)

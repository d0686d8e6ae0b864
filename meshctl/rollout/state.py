"""A rollout's state on disk, one JSON file per service, so it outlives the CLI that drives it.

    rollouts/reviews.json         the state (replaced atomically, under rollouts/.lock)
    rollouts/reviews.driver.lock  flock held by the one process driving it

Commands from other terminals (pause, resume, abort, promote) change the state under the lock; the driver
reads it every second. When no driver holds its lock, abort and promote act at once themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshctl.errors import Conflict, InvalidInput, UsageError
from meshctl.fsutil import atomic_write, ensure_dir, locked, os_error, read_text
from meshctl.home import MeshHome
from meshctl.rollout.machine import ACTIVE, REQUESTS, Event, IllegalTransition, Status, next_status


@dataclass
class Gates:
    success_rate: float = 99.0  # percent of the canary's requests that must not be 5xx
    max_p99_ms: float = 500.0
    min_requests: int = 20  # fewer in a step's interval: wait, up to 3 intervals, then fail (no traffic, no proof)


@dataclass
class Rollout:
    service: str
    stable: str
    canary: str
    steps: list[int]
    interval_s: float
    gates: Gates
    status: Status = Status.PROGRESSING
    step: int = 0  # index into steps
    weight: int = 0  # canary weight in force
    step_started: float = 0.0
    waited: int = 0  # intervals this step waited for enough traffic
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)  # pod -> counters at step start
    requested: Event | None = None  # abort or promote, asked from another terminal
    message: str = ""
    last_gate: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rollout:
        """From the JSON `save` writes: status and request are the enums' values, as before they were enums."""
        requested = None if data.get("requested") is None else Event(data["requested"])
        if requested is not None and requested not in REQUESTS:
            raise ValueError(f"requested {requested!r} is neither abort nor promote")
        return cls(**{**data, "gates": Gates(**data["gates"]), "status": Status(data["status"]),
                      "requested": requested})

    def note(self, now: float, text: str) -> None:
        self.message = text
        self.events.append({"time": now, "weight": self.weight, "event": text})
        del self.events[:-50]

    def fire(self, event: Event, now: float, reason: str = "") -> None:
        """Move by `event` as machine.TRANSITIONS allows (IllegalTransition otherwise) and record what it did.
        The caller sets the route's weights (machine.MOVES_TRAFFIC) and reads a new step's baseline."""
        last_step = self.step + 1 >= len(self.steps)
        if (event is Event.PASS and last_step) or (event is Event.COMPLETE and not last_step):
            raise IllegalTransition(f"step {self.step + 1}/{len(self.steps)} cannot {event}: "
                                    f"{'it is' if last_step else 'it is not'} the last step")
        self.status = next_status(self.status, event)
        if event is Event.PAUSE:
            self.note(now, f"paused at {self.weight}%")
        elif event is Event.RESUME:
            self.note(now, f"resumed at {self.weight}%")
        elif event is Event.ENTER:
            self._enter_step(now)
        elif event is Event.WAIT:
            self.waited += 1
            self.step_started = now  # the step gets another interval
            self.note(now, f"waiting for traffic: {reason}")
        elif event is Event.PASS:
            self.note(now, f"gate passed at {self.weight}%: {reason}")
            self.step += 1
            self._enter_step(now)
        elif event is Event.COMPLETE:
            self._finish(now, 100, f"{self.canary} takes all traffic: {reason}")
        elif event is Event.FAIL:
            self._finish(now, 0, f"rolled back at {self.weight}%: {reason}")
        elif event is Event.ABORT:
            self._finish(now, 0, f"aborted by the user; all traffic back to {self.stable}")
        elif event is Event.PROMOTE:
            self._finish(now, 100, f"promoted by the user: {self.canary} takes all traffic")

    def _enter_step(self, now: float) -> None:
        self.weight = self.steps[self.step]
        self.step_started, self.waited = now, 0
        self.note(now, f"step {self.step + 1}/{len(self.steps)}: {self.canary} at {self.weight}%")

    def _finish(self, now: float, weight: int, text: str) -> None:
        self.weight, self.requested = weight, None
        self.note(now, text)

    def request(self, event: Event, now: float) -> None:
        """A user's command from any terminal: pause and resume act at once; abort and promote are left for
        the driver (checked against the table now, so an ended rollout refuses them)."""
        if self.status not in ACTIVE:
            raise IllegalTransition(f"the rollout of {self.service} has ended ({self.status})", "start a new one")
        if event in REQUESTS:
            next_status(self.status, event)
            self.requested = event
        else:
            self.fire(event, now)


class RolloutStore:
    def __init__(self, home: MeshHome) -> None:
        self.root = home.root / "rollouts"

    def path(self, service: str) -> Path:
        return self.root / f"{service}.json"

    def load(self, service: str) -> Rollout:
        path = self.path(service)
        if not path.is_file():
            raise UsageError(f"{service} has no rollout", f"start one with `meshctl rollout {service} --to VERSION`")
        try:
            return Rollout.from_dict(json.loads(read_text(path)))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"{path}: not a rollout state file ({exc})", "delete it to start over") from exc

    def save(self, rollout: Rollout) -> None:
        ensure_dir(self.root)
        atomic_write(self.path(rollout.service), json.dumps(asdict(rollout), indent=1), mode=0o600)

    def update(self, service: str, change: Callable[[Rollout], None]) -> Rollout:
        """Read, change and write under the lock, so a driver and a `pause` never lose each other's write."""
        ensure_dir(self.root)
        with locked(self.root / ".lock"):
            rollout = self.load(service)
            change(rollout)
            self.save(rollout)
        return rollout

    def create(self, rollout: Rollout) -> None:
        ensure_dir(self.root)
        with locked(self.root / ".lock"):
            if self.path(rollout.service).is_file():
                old = self.load(rollout.service)
                if old.status in ACTIVE:
                    raise Conflict(f"{rollout.service} already has a rollout to {old.canary} ({old.status}, "
                                   f"{old.weight}%)", f"`meshctl rollout resume|abort|promote {rollout.service}`")
            self.save(rollout)

    def all(self) -> list[Rollout]:
        return [self.load(p.stem) for p in sorted(self.root.glob("*.json"))] if self.root.is_dir() else []

    @contextlib.contextmanager
    def driving(self, service: str) -> Iterator[bool]:
        """Try to become the rollout's driver: yields False if another process drives it already."""
        ensure_dir(self.root)
        lock = self.root / f"{service}.driver.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise os_error(exc, lock, "lock") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

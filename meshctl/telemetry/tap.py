"""`meshctl tap`'s client: one stream per sidecar from its host-only /tap path, merged onto one queue.

Each sidecar streams newline-delimited JSON (sidecar.engine.tap): a `start` line once the session is open,
`call` lines, `tick` lines while idle, an `end` line. A thread per sidecar reads its stream and puts Events
on a queue; the command reads them in order of arrival. A session the sidecar ended at its own time limit
is opened again when the user asked for no duration. `stop()` shuts every socket, so the sidecars see the
client go at once and log the end of their sessions.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from meshctl import const
from sidecar.engine.tap import TICK_S, TapSpec

READ_TIMEOUT_S = 3 * TICK_S  # a sidecar writes a tick every TICK_S while idle: silence this long means it is gone


@dataclass(frozen=True)
class Target:
    name: str  # the proxy (project.service)
    address: str
    port: int = const.PORT_METRICS


@dataclass
class Event:
    kind: str  # "start", "call", "end" (the sidecar ended the session), "error" (it could not be read)
    proxy: str
    data: dict[str, Any] = field(default_factory=dict)
    status: int = 0  # an HTTP status the sidecar refused with (kind "error")


class Stream(threading.Thread):
    """One sidecar's tap stream, read in a daemon thread."""

    def __init__(self, target: Target, spec: TapSpec, events: queue.Queue[Event], reopen: bool) -> None:
        super().__init__(name=f"tap-{target.name}", daemon=True)
        self.target = target
        self.spec = spec
        self.events = events
        self.reopen = reopen  # open a new session when the sidecar ends one at its own limit
        self.stopped = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        first = True
        while not self.stopped.is_set():
            try:
                end = self._session(first)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stopped.is_set():
                    what = "cannot reach" if first else "lost the tap stream from"
                    self.events.put(Event("error", self.target.name, {"message": f"{what} {self.target.name} at "
                                                                       f"{self.target.address}:{self.target.port}: "
                                                                       f"{exc or type(exc).__name__}"}))
                return
            first = False
            if end is None or not self.reopen or end.get("reason") != "duration reached":
                self.events.put(Event("end", self.target.name, end or {"reason": "stream ended"}))
                return

    def _session(self, first: bool) -> dict[str, Any] | None:
        conn = http.client.HTTPConnection(self.target.address, self.target.port, timeout=READ_TIMEOUT_S)
        try:
            conn.connect()
            with self._lock:
                self._sock = conn.sock
            if self.stopped.is_set():
                return None
            conn.request("GET", f"/tap?{self.spec.query()}", headers={"accept": "application/x-ndjson"})
            response = conn.getresponse()
            if response.status != 200:
                text = response.read(2048).decode("utf-8", "replace").strip()
                self.events.put(Event("error", self.target.name, {"message": f"{self.target.name} refused the tap: "
                                                                   f"{response.status} {text}"}, response.status))
                self.stopped.set()
                return None
            while True:
                raw = response.readline()
                if not raw:
                    return None  # closed without an end line: the sidecar went away
                item = json.loads(raw)
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "call":
                    self.events.put(Event("call", self.target.name, {**item, "proxy": self.target.name}))
                elif kind == "start" and first:
                    self.events.put(Event("start", self.target.name, item))
                elif kind == "end":
                    return dict(item)
        finally:
            with self._lock:
                self._sock = None
            conn.close()


class Tap:
    """Streams from several sidecars at once."""

    def __init__(self, targets: list[Target], spec: TapSpec, reopen: bool) -> None:
        self.events: queue.Queue[Event] = queue.Queue(maxsize=100_000)
        self.streams = [Stream(t, spec, self.events, reopen) for t in targets]

    def start(self) -> None:
        for stream in self.streams:
            stream.start()

    def stop(self) -> None:
        for stream in self.streams:
            stream.stop()
        for stream in self.streams:
            stream.join(timeout=2)

    def next(self, timeout: float) -> Event | None:
        try:
            return self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

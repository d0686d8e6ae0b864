"""The dashboard's HTTP side: the page and /api/state on 127.0.0.1, and the threads that poll."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from meshctl.errors import Conflict
from meshctl.telemetry.dashboard.state import Dashboard


def page() -> bytes:
    return resources.files("meshctl.telemetry").joinpath("dashboard.html").read_bytes()


class Server:
    """The HTTP server on 127.0.0.1 and the two pollers; `serve()` blocks until `stop()` or Ctrl-C."""

    def __init__(self, board: Dashboard, port: int, interval_s: float, slow_every_s: float | None = None) -> None:
        self.board, self.interval_s = board, interval_s
        self.slow_every_s = slow_every_s or max(5.0, interval_s)
        self._stop = threading.Event()
        html = page()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", html)
                elif path == "/api/state":
                    self._send(200, "application/json", board.state_json())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
                pass

        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise Conflict(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})",
                               "choose another port with --port") from None
            raise
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def _loop(self, every: float, poll: Callable[[], None]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            poll()
            self._stop.wait(max(0.0, every - (time.monotonic() - started)))

    def serve(self) -> None:
        for every, poll in ((self.interval_s, self.board.poll_fast), (self.slow_every_s, self.board.poll_slow)):
            threading.Thread(target=self._loop, args=(every, poll), daemon=True, name="dashboard-poll").start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stop.set()
            self.httpd.server_close()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()

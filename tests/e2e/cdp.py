"""A minimal Chrome DevTools Protocol client: headless chromium, driven over one websocket (wsproto).

Enough to load a page, run JavaScript in it and take a screenshot; no browser-automation package needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class CDPError(RuntimeError):
    pass


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """One headless chromium with one page; every method blocks until chromium answers."""

    def __init__(self, binary: str | None = None, width: int = 1400, height: int = 1000, timeout: float = 30) -> None:
        binary = binary or find_browser()
        if binary is None:
            raise CDPError(f"no browser found (looked for {', '.join(BROWSERS)})")
        self.timeout = timeout
        self.root = Path(tempfile.mkdtemp(prefix="meshctl-cdp-"))
        self.profile, self.log = self.root / "profile", self.root / "chromium.log"
        with self.log.open("wb") as log:  # a file, not a pipe: chromium is chatty and must never block on it
            self.proc = subprocess.Popen(
                [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--remote-debugging-port=0",
                 f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.sock: socket.socket | None = None
        self._next_id = 0
        try:
            port = self._devtools_port()
            self._connect(self._page_url(port))
        except BaseException:
            self.close()
            raise

    # --- connecting ---------------------------------------------------------------------------------------------

    def _devtools_port(self) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")[-2000:]
                raise CDPError(f"chromium exited with {self.proc.returncode}: {err}")
            lines = active.read_text().splitlines() if active.is_file() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            time.sleep(0.1)
        raise CDPError(f"chromium wrote no {active.name} within {self.timeout}s")

    def _page_url(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as resp:
                targets = json.loads(resp.read())
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise CDPError("chromium shows no page target")

    def _connect(self, ws_url: str) -> None:
        url = urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=self.timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=url.netloc, target=url.path)))
        self._pending: list[Any] = []
        self._text = ""
        while True:
            for event in self._events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, RejectConnection):
                    raise CDPError(f"chromium refused the websocket ({event.status_code})")

    def _events(self) -> list[Any]:
        assert self.sock is not None
        data = self.sock.recv(1 << 16)
        if not data:
            raise CDPError("chromium closed the connection")
        self.ws.receive_data(data)
        return list(self.ws.events())

    # --- the protocol -------------------------------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.sock is not None
        self._next_id += 1
        mine = self._next_id
        self.sock.sendall(self.ws.send(TextMessage(data=json.dumps({"id": mine, "method": method,
                                                                    "params": params}))))
        while True:
            for event in self._events():
                if isinstance(event, Ping):
                    self.sock.sendall(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise CDPError(f"chromium closed the websocket ({event.code} {event.reason})")
                elif isinstance(event, TextMessage):
                    self._text += event.data
                    if not event.message_finished:
                        continue
                    message, self._text = json.loads(self._text), ""
                    if message.get("id") != mine:
                        continue  # an event, or an answer nobody waits for any more
                    if "error" in message:
                        raise CDPError(f"{method}: {message['error'].get('message')}")
                    return dict(message.get("result", {}))

    def evaluate(self, js: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{js[:80]!r} threw: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"cannot load {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", f"{url} loaded")

    def wait_for(self, js: str, what: str, timeout: float = 30, interval: float = 0.25) -> Any:
        """Evaluate `js` until it is truthy and return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(js)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting until {what} (last value: {value!r})")
            time.sleep(interval)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": size["height"], "scale": 1})
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):  # closing anyway
                self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Bookinfo, Istio's sample, as one small stdlib program; ROLE picks the service.

productpage -> details, reviews ; reviews v2/v3 -> ratings. Every service answers on :9080, forwards
the trace headers it received (as apps in any mesh must), and writes each response in one send: Python's
http.server otherwise splits headers and body and stalls on Nagle's algorithm.

To try retries, outlier detection and rollbacks, a service can be made to misbehave: FAULT_RATE (0-1),
FAULT_STATUS and FAULT_DELAY (seconds) in its environment, or at run time from inside its pod:
  curl -X PUT 127.0.0.1:9080/fault -d '{"rate": 0.5, "status": 503}'
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROLE = os.environ.get("ROLE", "details")
VERSION = os.environ.get("SERVICE_VERSION", "v1")
PORT = int(os.environ.get("PORT", "9080"))
STARS = {"v2": "black", "v3": "red"}
FAULT = {"rate": float(os.environ.get("FAULT_RATE", "0")), "status": int(os.environ.get("FAULT_STATUS", "503")),
         "delay": float(os.environ.get("FAULT_DELAY", "0"))}
FORWARD = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
           "x-b3-sampled", "x-b3-flags", "b3", "end-user", "user-agent")


def call(url: str, incoming: dict[str, str]) -> tuple[int, dict[str, Any]]:
    headers = {k: v for k, v in incoming.items() if k.lower() in FORWARD}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": f"{url} answered {exc.code}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 503, {"error": f"{url} unreachable: {exc}"}


def details(book: int, _: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return 200, {"id": book, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
                 "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890"}


def ratings(book: int, _: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return 200, {"id": book, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}


def reviews(book: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"id": book, "version": VERSION, "podname": socket.gethostname(), "reviews": [
        {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
        {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."}]}
    if VERSION in STARS:
        status, rated = call(f"http://ratings:9080/ratings/{book}", headers)
        for review in body["reviews"]:
            review["rating"] = ({"stars": rated["ratings"][review["reviewer"]], "color": STARS[VERSION]}
                                if status == 200 else {"error": "Ratings service is currently unavailable"})
    return 200, body


def productpage(book: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    d_status, d_body = call(f"http://details:9080/details/{book}", headers)
    r_status, r_body = call(f"http://reviews:9080/reviews/{book}", headers)
    return 200, {"product": {"id": book, "title": "The Comedy of Errors"}, "details": d_body,
                 "reviews": r_body, "status": {"details": d_status, "reviews": r_status}}


ROUTES = {"details": ("/details/", details), "ratings": ("/ratings/", ratings), "reviews": ("/reviews/", reviews),
          "productpage": ("/productpage", productpage)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"bookinfo-{ROLE}/{VERSION}"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # the sidecar keeps the access log
        pass

    def do_PUT(self) -> None:
        if self.path != "/fault" or self.client_address[0] != "127.0.0.1":
            self.reply(404, {"error": "only PUT /fault, from inside the pod"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        FAULT.update({k: type(FAULT[k])(v) for k, v in body.items() if k in FAULT})
        self.reply(200, FAULT)

    def do_GET(self) -> None:
        prefix, handler = ROUTES[ROLE]
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/healthz"):
            self.reply(200, {"status": "ok", "role": ROLE, "version": VERSION})
            return
        if FAULT["delay"]:
            time.sleep(FAULT["delay"])
        if FAULT["rate"] and random.random() < FAULT["rate"]:
            self.reply(int(FAULT["status"]), {"error": "injected by FAULT_RATE", "version": VERSION})
        elif ROLE == "productpage" and path in ("/", "/productpage"):
            self.reply(*handler(0, dict(self.headers)))
        elif path.startswith(prefix):
            tail = path[len(prefix):]
            self.reply(*handler(int(tail) if tail.isdigit() else 0, dict(self.headers)))
        else:
            self.reply(404, {"error": f"no route for {path}"})

    def reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nx-served-by: {ROLE}-{VERSION}\r\n\r\n").encode()
        self.wfile.write(head + payload)


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()

"""The e2e gRPC server: raw bytes in and out (grpc's generic handlers, no protobuf), one process per version.

Methods:
  /demo.Echo/Hello  a JSON reply: this server's version, the method, the metadata it received, how many calls of
                    the caller's `x-key` it has seen (`attempt`, this one included) and how many of them it saw
                    cancelled, and how many calls it was serving at once when this one arrived (`inflight`)
  /demo.Echo/Slow   the same after sleeping 2 s (or `x-sleep-ms`), returning early if the caller goes away
  /demo.Echo/Blob   the request bytes, back unchanged (large messages)
  /demo.Admin/Reset forget every key's counts (an admin method, for authorization on a method path)

Behaviour per call, from the caller's metadata:
  x-key: K          the key the counts above are kept under ("" if none)
  x-fail-times: N   fail the key's first N calls with `x-fail-code` (default UNAVAILABLE), then succeed
  x-sleep-ms: MS    sleep before answering (Hello and Blob too)

Every answer carries `x-version` in its trailers (so failures name their server) and a successful one in its
initial metadata too, sent with the answer (never before a sleep: a proxy's timeout can still answer the call).
Counts are per process: a test that relies on them sends the calls to one version.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

VERSION = os.environ.get("VERSION", "v1")
PORT = int(os.environ.get("PORT", "50051"))
MAX_MESSAGE = 64 * 1024 * 1024
SLOW_DEFAULT_MS = 2000

lock = threading.Lock()
seen: Counter[str] = Counter()  # calls per x-key
cancelled: Counter[str] = Counter()  # of those, calls the caller cancelled while the server slept
inflight = 0


def metadata_of(context: grpc.ServicerContext) -> dict[str, str]:
    return {m.key: m.value if isinstance(m.value, str) else m.value.hex() for m in context.invocation_metadata()}


def sleep(context: grpc.ServicerContext, ms: float) -> bool:
    """Sleep up to `ms`, in short steps; False as soon as the caller has gone (deadline, cancel, reset)."""
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        if not context.is_active():
            return False
        time.sleep(min(0.02, max(0.0, end - time.monotonic())))
    return bool(context.is_active())


def handler(method: str, default_sleep_ms: float = 0) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        global inflight
        version = (("x-version", VERSION),)
        context.set_trailing_metadata(version)
        metadata = metadata_of(context)
        key = metadata.get("x-key", "")
        with lock:
            inflight += 1
            concurrent = inflight
            seen[key] += 1
            attempt = seen[key]
        try:
            if attempt <= int(metadata.get("x-fail-times", "0")):
                code = grpc.StatusCode[metadata.get("x-fail-code", "UNAVAILABLE").upper()]
                context.abort(code, f"{VERSION} fails call {attempt} of key {key!r} on purpose")
            if not sleep(context, float(metadata.get("x-sleep-ms", default_sleep_ms))):
                with lock:
                    cancelled[key] += 1
                return b""
            # Headers go out with the answer, as a gRPC server's do: until then a proxy can still answer itself.
            context.send_initial_metadata(version)
            if method == "/demo.Echo/Blob":
                return request
            if method == "/demo.Admin/Reset":
                with lock:
                    seen.clear()
                    cancelled.clear()
            reply: dict[str, Any] = {"version": VERSION, "method": method, "metadata": metadata, "key": key,
                                     "attempt": attempt, "cancelled": cancelled[key], "inflight": concurrent,
                                     "request_bytes": len(request)}
            return json.dumps(reply).encode()
        finally:
            with lock:
                inflight -= 1
    return handle


def main() -> None:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256), options=options)
    echo = {name: grpc.unary_unary_rpc_method_handler(handler(f"/demo.Echo/{name}", ms))
            for name, ms in (("Hello", 0), ("Slow", SLOW_DEFAULT_MS), ("Blob", 0))}
    admin = {"Reset": grpc.unary_unary_rpc_method_handler(handler("/demo.Admin/Reset"))}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", echo),
                                     grpc.method_handlers_generic_handler("demo.Admin", admin)))
    server.add_insecure_port(f"0.0.0.0:{PORT}")
    server.start()
    print(f"demo gRPC server {VERSION} on :{PORT}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()

"""The e2e gRPC client, run inside a container: N calls of one method on ONE channel (one HTTP/2 connection),
at most C at once, printed as one JSON object.

    python3 client.py [--target echo:50051] [--method /demo.Echo/Hello] [-n N] [-c C] [-m KEY=VALUE …]
                      [--deadline SECONDS] [--size BYTES] [--replies]

`{i}` in a metadata value becomes the call's index. Output:
  codes     {status name: count}, e.g. {"OK": 398, "UNAVAILABLE": 2}
  versions  {x-version the answer carried (initial metadata or trailers), or "none": count}
  rows      per call [status name, version, milliseconds]
  replies   with --replies: per call {code, details, reply (the server's JSON, or for Blob whether the bytes came
            back intact), initial (initial metadata), trailing (trailers)}
  first_error  the first failed call's status and details, or null
  wall_ms, p50_ms, max_ms, peak_connections (ESTABLISHED TCP connections to the target's port in this network
  namespace, sampled while the calls ran: the app's and, in a pod, its sidecar's upstream ones)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from typing import Any

import grpc

MAX_MESSAGE = 64 * 1024 * 1024


def payload(size: int) -> bytes:
    """`size` bytes no two neighbouring 256-byte blocks of which are alike, so a lost or repeated frame shows."""
    block = bytes(range(256))
    return b"".join(block[i % 251:] + block[:i % 251] for i in range(size // 256 + 1))[:size]


def established(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        count += sum(1 for row in rows if row.split()[3] == "01" and int(row.split()[2].rsplit(":", 1)[1], 16) == port)
    return count


def metadata_dict(items: Any) -> dict[str, str]:
    return {m.key: m.value if isinstance(m.value, str) else m.value.hex() for m in items or ()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", default="echo:50051")
    parser.add_argument("--method", default="/demo.Echo/Hello")
    parser.add_argument("-n", type=int, default=1)
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-m", "--metadata", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--deadline", type=float, default=None, help="per-call deadline, seconds")
    parser.add_argument("--size", type=int, default=5, help="request bytes")
    parser.add_argument("--replies", action="store_true")
    args = parser.parse_args()
    pairs = [tuple(m.split("=", 1)) for m in args.metadata]
    request = payload(args.size)
    port = int(args.target.rsplit(":", 1)[1])

    rows: list[list[Any]] = [[] for _ in range(args.n)]
    replies: list[dict[str, Any]] = [{} for _ in range(args.n)]
    slots = threading.Semaphore(args.concurrency)
    all_done = threading.Event()
    left = [args.n]
    lock = threading.Lock()
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], established(port))
            sampling.wait(0.02)

    def finish(i: int, started: float, future: Any) -> None:
        try:
            ms = (time.monotonic() - started) * 1000
            error = future.exception()
            code = future.code() if error is not None else grpc.StatusCode.OK
            initial, trailing = metadata_dict(future.initial_metadata()), metadata_dict(future.trailing_metadata())
            version = initial.get("x-version") or trailing.get("x-version") or "none"
            rows[i] = [code.name, version, round(ms, 2)]
            reply: Any = None
            if error is None:
                body = future.result()
                reply = {"intact": body == request, "bytes": len(body)} if args.method.endswith("/Blob") \
                    else json.loads(body)
            replies[i] = {"code": code.name, "details": future.details() if error is not None else None,
                          "reply": reply, "initial": initial, "trailing": trailing}
        except Exception as exc:  # a bug here must show, not hang the client
            rows[i] = ["CLIENT_ERROR", "none", 0]
            replies[i] = {"code": "CLIENT_ERROR", "details": repr(exc)}
        finally:
            slots.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    all_done.set()

    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        call = channel.unary_unary(args.method)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.monotonic()
        for i in range(args.n):
            slots.acquire()
            metadata = [(k, v.replace("{i}", str(i))) for k, v in pairs]
            started = time.monotonic()
            future = call.future(request, timeout=args.deadline, metadata=metadata)
            future.add_done_callback(lambda f, i=i, started=started: finish(i, started, f))
        if args.n:
            all_done.wait()
        wall = time.monotonic() - began
        sampling.set()
        sampler.join()

    times = sorted(r[2] for r in rows)
    errors = [r for r in replies if r.get("code") != "OK"]
    out: dict[str, Any] = {
        "codes": dict(Counter(r[0] for r in rows)), "versions": dict(Counter(r[1] for r in rows)), "rows": rows,
        "first_error": {"code": errors[0]["code"], "details": errors[0].get("details")} if errors else None,
        "wall_ms": round(wall * 1000, 1), "p50_ms": times[len(times) // 2] if times else None,
        "max_ms": times[-1] if times else None, "peak_connections": peak[0]}
    if args.replies:
        out["replies"] = replies
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""The bench's TCP client (wrk speaks only HTTP): on each of C connections, up to N round trips of a SIZE-byte
message to the echo server, each one sent whole and read back whole before the next; stops at N or after
SECONDS, whichever comes first, and every socket call times out. Prints one JSON object with the same keys as
the bench reads from wrk: rps, requests, p50_ms..p99_ms, errors (wrong bytes back), socket_errors.

Stdlib only: it runs in the bench image as `python3 /opt/bench/echo_client.py HOST PORT ...`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TIMEOUT_S = 5.0
PERCENTILES = (50, 75, 90, 99)


def payload(size: int) -> bytes:
    """Binary from the first byte (00 01 02 ...): no proxy can mistake it for HTTP or a TLS record."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def percentile(ordered: list[float], pct: int) -> float:
    """Nearest rank, as wrk reports them; `ordered` is sorted and not empty."""
    rank = max(1, -(-pct * len(ordered) // 100))  # ceil(pct/100 * n)
    return ordered[rank - 1]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds per round trip
    errors: int = 0
    socket_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def summarize(tally: Tally, elapsed: float) -> dict[str, float]:
    ordered = sorted(tally.latencies)
    out = {"rps": round(len(ordered) / elapsed, 2) if elapsed > 0 else 0.0, "requests": float(len(ordered))}
    if ordered:
        out.update({f"p{p}_ms": round(percentile(ordered, p) * 1000, 3) for p in PERCENTILES})
    out["errors"], out["socket_errors"] = float(tally.errors), float(tally.socket_errors)
    return out


def connection(address: tuple[str, int], data: bytes, rounds: int, deadline: float, tally: Tally) -> None:
    """One connection's round trips; a failure ends this connection (counted), never the run."""
    buf = bytearray(len(data))
    view = memoryview(buf)
    latencies: list[float] = []
    try:
        with socket.create_connection(address, timeout=TIMEOUT_S) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rounds):
                if time.monotonic() >= deadline:
                    break
                started = time.perf_counter()
                sock.sendall(data)
                got = 0
                while got < len(buf):
                    n = sock.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError("closed by the peer mid-echo")
                    got += n
                latencies.append(time.perf_counter() - started)
                if buf != data:
                    with tally.lock:
                        tally.errors += 1
                    break
    except OSError:
        with tally.lock:
            tally.socket_errors += 1
    finally:
        with tally.lock:
            tally.latencies.extend(latencies)


def run(host: str, port: int, connections: int, rounds: int, seconds: float, size: int) -> dict[str, float]:
    data, tally = payload(size), Tally()
    started = time.monotonic()
    threads = [threading.Thread(target=connection, args=((host, port), data, rounds, started + seconds, tally),
                                daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(tally, time.monotonic() - started)


def bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}-{high:g}")
        return value
    return convert


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="echo_client.py", description=(__doc__ or "").splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=bounded(int, 1, 65535))
    p.add_argument("--connections", "-c", type=bounded(int, 1, 256), default=1)
    p.add_argument("--rounds", "-n", type=bounded(int, 1, 10_000_000), default=100_000,
                   help="round trips per connection at most")
    p.add_argument("--seconds", "-d", type=bounded(float, 0.1, 120), default=5.0, help="time cap")
    p.add_argument("--size", type=bounded(int, 1, 16 * 2**20), default=65536, help="bytes per message")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    result = run(args.host, int(args.port), int(args.connections), int(args.rounds), args.seconds, int(args.size))
    print(json.dumps(result))
    return 0 if result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

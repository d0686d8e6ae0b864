"""Steady, bounded load from inside a pod, for the fault tests.

    python3 steady.py URL RATE SECONDS [WORKERS]

WORKERS threads share RATE requests/s (each on its own keep-alive connection, reopened after an error)
for SECONDS. Prints one JSON object: every request's start time (seconds from the start), status (0 for
no answer), error and duration, so a test can tell when failures happened relative to the fault it
caused. `tests/soak.py` drives its load from the host with `run`.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

TIMEOUT_S = 10.0


def worker(url: str, interval: float, offset: float, start: float, end: float, rows: list[list],
           timeout: float = TIMEOUT_S) -> None:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    due = start + offset
    while due < end:
        time.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic() - start
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            row = [round(sent, 3), response.status, ""]
        except Exception as exc:  # any failure is data: recorded, and a fresh connection for the next one
            row = [round(sent, 3), 0, repr(exc)[:200]]
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        rows.append([*row, round(time.monotonic() - start - sent, 4)])
        due += interval
    conn.close()


def run(url: str, rate: float, seconds: float, workers: int, rows: list[list], timeout: float = TIMEOUT_S) -> None:
    """`workers` keep-alive connections share `rate` requests/s for `seconds`; each request adds a row."""
    interval = workers / rate
    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(url, interval, i * interval / workers, start, start + seconds,
                                                     rows, timeout)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    rows: list[list] = []
    run(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 4, rows)
    rows.sort()
    print(json.dumps({"rows": rows, "sent": len(rows), "ok": sum(1 for r in rows if 200 <= r[1] < 400)}))


if __name__ == "__main__":
    main()

"""Steady, bounded load from inside a pod, for the fault tests.

    python3 steady.py URL RATE SECONDS [WORKERS]

WORKERS threads share RATE requests/s (each on its own keep-alive connection, reopened after an error)
for SECONDS. Prints one JSON object: every request's start time (seconds from the start), status (0 for
no answer) and error, so a test can tell when failures happened relative to the fault it caused.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

TIMEOUT_S = 10.0


def worker(url: str, interval: float, offset: float, start: float, end: float, rows: list[list]) -> None:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=TIMEOUT_S)
    due = start + offset
    while due < end:
        time.sleep(max(0.0, due - time.monotonic()))
        sent = time.monotonic() - start
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            rows.append([round(sent, 3), response.status, ""])
        except Exception as exc:  # any failure is data: recorded, and a fresh connection for the next one
            rows.append([round(sent, 3), 0, repr(exc)[:200]])
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=TIMEOUT_S)
        due += interval
    conn.close()


def main() -> None:
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    interval = workers / rate
    start = time.monotonic()
    rows: list[list] = []
    threads = [threading.Thread(target=worker, args=(url, interval, i * interval / workers, start, start + seconds,
                                                     rows)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows.sort()
    print(json.dumps({"rows": rows, "sent": len(rows), "ok": sum(1 for r in rows if 200 <= r[1] < 400)}))


if __name__ == "__main__":
    main()

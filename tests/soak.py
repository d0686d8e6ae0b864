"""Soak: a steady, bounded load through bookinfo for N minutes, watching every sidecar's memory and fds.

    meshctl demo                                   # bookinfo, meshed (once)
    .venv/bin/python -m tests.soak --minutes 10 --rate 40 --save soak.json

Requests go from the host to productpage's published port, so each one crosses productpage's sidecar,
then details, reviews and (for v2/v3) ratings through theirs. Every 15 s it reads each sidecar's proxy
process (resident memory and open file descriptors). It passes (exit 0) when:
- no request failed (nothing is injected, so any failure is unexpected);
- no proxy grew more than 10% between the start of the soak and its end;
- once the load stops and the mesh is idle again, no proxy holds more descriptors than it held idle
  after the warm-up (plus a small allowance). A warm-up of the same load comes first, so keep-alive
  connections pooled between sidecars (Envoy keeps them too) are open in both idle moments: only a
  descriptor that leaks with the number of requests makes a difference.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.context import Context

PROXY_PROC = """
import glob, os
for f in glob.glob('/proc/[0-9]*/cmdline'):
    c = open(f, 'rb').read()
    if b'addons.main' in c and b'glob' not in c:
        pid = f.split('/')[2]
        rss = [int(l.split()[1]) for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')][0]
        print(pid, rss, len(os.listdir(f'/proc/{pid}/fd')))
"""
SAMPLE_EVERY_S = 15
WORKERS = 8  # keep-alive connections sharing the rate
IDLE_PAUSE_S = 10  # after a load: client connections close, pools settle
FD_ALLOWANCE = 4  # idle pooled connections to peers may differ by a few between two idle moments
GROWTH_LIMIT = 0.10


@dataclass
class Tally:
    ok: int = 0
    failed: list[tuple[float, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(rate: float, seconds: float, workers: int, tally: Tally) -> None:
    """`workers` keep-alive connections share `rate` requests/s to productpage for `seconds`."""
    start = time.monotonic()
    interval = workers / rate

    def worker(offset: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", 9080, timeout=30)
        due = start + offset
        while due < start + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            t = time.monotonic()
            try:
                conn.request("GET", "/productpage")
                response = conn.getresponse()
                response.read()
                failure = "" if response.status == 200 else f"HTTP {response.status}"
            except Exception as exc:  # recorded; a fresh connection for the next request
                failure = repr(exc)[:200]
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", 9080, timeout=30)
            with tally.lock:
                if failure:
                    tally.failed.append((round(t - start, 2), failure))
                else:
                    tally.ok += 1
                    tally.latencies.append(time.monotonic() - t)
            due += interval
        conn.close()

    threads = [threading.Thread(target=worker, args=(i * interval / workers,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def sample(ctx: Context) -> dict[str, tuple[int, int, int]]:
    """sidecar -> (proxy pid, RSS in kB, open fds), for every bookinfo sidecar."""
    found = {}
    for c in ctx.docker().containers.list(filters={"label": ["com.docker.compose.project=bookinfo",
                                                              "io.meshctl.component=sidecar"]}):
        code, out = c.exec_run(["python3", "-c", PROXY_PROC])
        if code == 0 and out.strip():
            pid, rss, fds = (int(v) for v in out.split())
            found[c.name] = (pid, rss, fds)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second to productpage")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load before the soak")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    seconds = args.minutes * 60
    if not 0 < seconds <= 3600 or not 0 < args.rate <= 500 or not 0 <= args.warmup <= 600:
        parser.error("keep the soak bounded: at most 60 minutes and 500 requests/s")
    ctx = Context()
    cold = sample(ctx)
    if not cold:
        print("soak: no bookinfo sidecar runs; start it with `meshctl demo`", file=sys.stderr)
        return 2
    tally = Tally()
    print(f"warm-up: {args.warmup:.0f}s at {args.rate:g} req/s", flush=True)
    drive(args.rate, args.warmup, WORKERS, tally)
    time.sleep(IDLE_PAUSE_S)
    idle_before = sample(ctx)
    load = threading.Thread(target=drive, args=(args.rate, seconds, WORKERS, tally))
    started = time.monotonic()
    load.start()
    samples: list[tuple[float, dict[str, tuple[int, int, int]]]] = []
    while load.is_alive():
        load.join(SAMPLE_EVERY_S)
        samples.append((time.monotonic() - started, sample(ctx)))
        with tally.lock:
            print(f"{samples[-1][0]:6.0f}s  ok {tally.ok}  failed {len(tally.failed)}", flush=True)
    time.sleep(IDLE_PAUSE_S)
    idle_after = sample(ctx)

    first, last = samples[0][1], samples[-1][1]
    rows: list[dict[str, Any]] = []
    for name in sorted(idle_before):
        pids = {s.get(name, (0,))[0] for _, s in samples} | {cold[name][0], idle_before[name][0], idle_after[name][0]}
        growth = (last[name][1] - first[name][1]) / first[name][1]
        rows.append({"sidecar": name, "rss_cold_kb": cold[name][1], "rss_soak_start_kb": first[name][1],
                     "rss_end_kb": last[name][1], "rss_peak_kb": max(s[name][1] for _, s in samples if name in s),
                     "growth": round(growth, 4), "fds_cold": cold[name][2], "fds_idle_before": idle_before[name][2],
                     "fds_idle_after": idle_after[name][2],
                     "fds_peak": max(s[name][2] for _, s in samples if name in s), "restarted": len(pids) > 1})
    lat = sorted(tally.latencies)
    report = {"minutes": args.minutes, "warmup_s": args.warmup, "rate": args.rate,
              "requests": tally.ok + len(tally.failed), "ok": tally.ok,
              "failed": len(tally.failed), "failures": tally.failed[:20],
              "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
              "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None, "sidecars": rows}
    problems = [f"{len(tally.failed)} requests failed"] if tally.failed else []
    for r in rows:
        if r["growth"] > GROWTH_LIMIT:
            problems.append(f"{r['sidecar']} grew {r['growth']:.1%} during the soak")
        if r["fds_idle_after"] > r["fds_idle_before"] + FD_ALLOWANCE:
            problems.append(f"{r['sidecar']} holds {r['fds_idle_after']} fds idle, {r['fds_idle_before']} before")
        if r["restarted"]:
            problems.append(f"{r['sidecar']}'s proxy restarted")
    report["problems"] = problems
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        args.save.write_text(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

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
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meshctl.context import Context
from tests.e2e.testbed import steady

PROXY_PROC = """
import glob, os
for f in glob.glob('/proc/[0-9]*/cmdline'):
    c = open(f, 'rb').read()
    if b'sidecar.main' in c and b'glob' not in c:
        pid = f.split('/')[2]
        rss = [int(l.split()[1]) for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')][0]
        print(pid, rss, len(os.listdir(f'/proc/{pid}/fd')))
"""
SAMPLE_EVERY_S = 15
WORKERS = 8  # keep-alive connections sharing the rate
IDLE_PAUSE_S = 10  # after a load: client connections close, pools settle
URL = "http://127.0.0.1:9080/productpage"
TIMEOUT_S = 30.0
FD_ALLOWANCE = 4  # idle pooled connections to peers may differ by a few between two idle moments
GROWTH_LIMIT = 0.10


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
    warmup_rows: list[list] = []  # [seconds from start, status, error, duration], as steady.py records them
    print(f"warm-up: {args.warmup:.0f}s at {args.rate:g} req/s", flush=True)
    steady.run(URL, args.rate, args.warmup, WORKERS, warmup_rows, TIMEOUT_S)
    time.sleep(IDLE_PAUSE_S)
    idle_before = sample(ctx)
    rows: list[list] = []
    load = threading.Thread(target=steady.run, args=(URL, args.rate, seconds, WORKERS, rows, TIMEOUT_S))
    started = time.monotonic()
    load.start()
    samples: list[tuple[float, dict[str, tuple[int, int, int]]]] = []
    while load.is_alive():
        load.join(SAMPLE_EVERY_S)
        samples.append((time.monotonic() - started, sample(ctx)))
        done = list(rows)
        ok = sum(1 for r in done if r[1] == 200)
        print(f"{samples[-1][0]:6.0f}s  ok {ok}  failed {len(done) - ok}", flush=True)
    time.sleep(IDLE_PAUSE_S)
    idle_after = sample(ctx)

    first, last = samples[0][1], samples[-1][1]
    rows_out: list[dict[str, Any]] = []
    for name in sorted(idle_before):
        pids = {s.get(name, (0,))[0] for _, s in samples} | {cold[name][0], idle_before[name][0], idle_after[name][0]}
        growth = (last[name][1] - first[name][1]) / first[name][1]
        rows_out.append({
            "sidecar": name, "rss_cold_kb": cold[name][1], "rss_soak_start_kb": first[name][1],
            "rss_end_kb": last[name][1], "rss_peak_kb": max(s[name][1] for _, s in samples if name in s),
            "growth": round(growth, 4), "fds_cold": cold[name][2], "fds_idle_before": idle_before[name][2],
            "fds_idle_after": idle_after[name][2], "fds_peak": max(s[name][2] for _, s in samples if name in s),
            "restarted": len(pids) > 1})
    every = warmup_rows + rows
    failed = [(r[0], r[2] or f"HTTP {r[1]}") for r in every if r[1] != 200]  # nothing is injected: any is a failure
    lat = sorted(r[3] for r in every if r[1] == 200)
    report = {"minutes": args.minutes, "warmup_s": args.warmup, "rate": args.rate, "requests": len(every),
              "ok": len(every) - len(failed), "failed": len(failed), "failures": failed[:20],
              "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
              "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None, "sidecars": rows_out}
    problems = [f"{len(failed)} requests failed"] if failed else []
    for r in rows_out:
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

"""The gRPC load: Debian's h2load (nghttp2-client) making unary calls over h2c to /bench.Echo/Call, C connections
with M concurrent streams each, for a bounded time (and under coreutils' `timeout`, so it ends whatever the
proxies do). h2load prints no percentiles: they come from its per-request log.

A warm-up run of WARM_UP_S comes first, its figures dropped: nginx's grpc_pass carries one call per upstream
connection, so a pair of nginx sets up 2 x C x M mutual-TLS connections before it reaches its steady state (a
second of CPU on two cores), and the sidecars' pools fill too. (h2load's own --warm-up-time keeps counting the
warm-up's bytes, which the check below needs exact.)

What counts as a failure, so none is hidden:
- errors: responses with a non-2xx status, plus 2xx responses without a whole gRPC message (a proxy's
  trailers-only gRPC error is a 200 with no body: h2load counts it a success, the byte count does not);
- socket_errors: requests h2load saw fail below HTTP (a reset stream, a closed connection, a timeout).
req/s counts only the calls that got their message.
"""

from __future__ import annotations

import re

from docker.models.containers import Container

from meshctl.bench.echo_client import PERCENTILES, percentile
from meshctl.bench.grpc_server import METHOD, PORT, message
from meshctl.errors import MeshError

REQUEST_FILE = "/opt/bench/grpc-request.bin"  # written at image build by grpc_server.py --request
LOG_FILE = "/tmp/meshbench-h2load.log"
ANSWER_BYTES = len(message())  # what each successful call's DATA frames carry
INACTIVITY_S = 5  # a connection silent this long fails its requests (as wrk's --timeout 5s)
GRACE_S = 30  # beyond the load's duration before `timeout` ends h2load
WARM_UP_S = 1

FINISHED_RE = re.compile(r"^finished in ([\d.]+)s, ([\d.]+) req/s", re.M)
REQUESTS_RE = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored, (\d+) timeout", re.M)
TRAFFIC_RE = re.compile(r"^traffic: .*?, \S+ \((\d+)\) data\s*$", re.M)


def argv(host: str, concurrency: int, streams: int, seconds: float, log: bool = True) -> list[str]:
    duration = max(1, round(seconds))
    return ["timeout", "-k", "5", str(duration + GRACE_S),
            "h2load", f"-c{concurrency}", f"-m{streams}", "-D", str(duration), "-N", str(INACTIVITY_S),
            "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", REQUEST_FILE,
            *(("--log-file", LOG_FILE) if log else ()), f"http://{host}:{PORT}{METHOD}"]


def latencies(log: str) -> list[float]:
    """Milliseconds per completed request, sorted, from h2load's log (start µs, status, duration µs per line)."""
    out = []
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].isdigit():
            out.append(int(fields[2]) / 1000)
    return sorted(out)


def parse(text: str, log: str = "", answer_bytes: int = ANSWER_BYTES) -> dict[str, float]:
    """The bench's figures from h2load's summary and its per-request log."""
    finished, requests, traffic = FINISHED_RE.search(text), REQUESTS_RE.search(text), TRAFFIC_RE.search(text)
    if not finished or not requests or not traffic:
        lines = [line for line in text.strip().splitlines() if not line.startswith("progress:")]
        raise MeshError("h2load printed no result", lines[-1][:300] if lines else "no output")
    elapsed = float(finished.group(1))
    _total, started, done, succeeded, failed, errored, _timeout = (int(g) for g in requests.groups())
    if not done:
        raise MeshError(f"h2load completed no gRPC call ({started} started)",
                        "the gRPC port did not answer over h2c through this mode's proxies")
    without_answer = max(0, succeeded - int(traffic.group(1)) // answer_bytes)
    good = succeeded - without_answer
    out = {"rps": round(good / elapsed, 2) if elapsed > 0 else 0.0, "requests": float(done)}
    ordered = latencies(log)
    if ordered:
        out.update({f"p{p}_ms": round(percentile(ordered, p), 3) for p in PERCENTILES})
    out["errors"] = float(failed - errored + without_answer)
    out["socket_errors"] = float(errored)
    return out


def _h2load(caller: Container, argv: list[str]) -> str:
    code, out = caller.exec_run(argv)
    text: str = out.decode(errors="replace")
    if code != 0:
        what = "did not finish in time" if code in (124, 137) else f"failed (exit {code})"
        raise MeshError(f"h2load {what}", text.strip().splitlines()[-1][:300] if text.strip() else "")
    return text


def run(caller: Container, host: str, concurrency: int, streams: int, seconds: float) -> dict[str, float]:
    _h2load(caller, argv(host, concurrency, streams, WARM_UP_S, log=False))
    text = _h2load(caller, argv(host, concurrency, streams, seconds))
    _, log = caller.exec_run(["sh", "-c", f"cat {LOG_FILE} && rm -f {LOG_FILE}"])
    return parse(text, log.decode(errors="replace"))

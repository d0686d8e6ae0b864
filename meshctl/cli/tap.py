"""`meshctl tap SERVICE`: the live requests and responses through a service's sidecars, both directions.

The sidecars do the filtering and the redaction (sidecar.engine.tap); this command opens one stream per
sidecar, prints rows (or JSON lines) as they arrive, and with --save writes them as mitmproxy flows.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from meshctl.cli.flags import ProjectOption
from meshctl.cli.flags import duration as seconds
from meshctl.context import Context
from meshctl.errors import Conflict, MeshError, UsageError
from meshctl.mesh import parse_identity
from meshctl.output import stamped
from meshctl.pilot import dataplane
from meshctl.status import ExitCode
from meshctl.telemetry import mesh
from meshctl.telemetry.flows import FlowFile
from meshctl.telemetry.tap import Event, Tap, Target
from sidecar.contract import IdentityError
from sidecar.engine.tap import DEFAULT_BODY, MAX_BODY, MAX_DURATION_S, MAX_RECORDS, TapError, TapSpec

OPEN_TIMEOUT_S = 10.0  # every sidecar answers (start or refusal) within this, or counts as unreachable
WIDTHS = (12, 16, 3, 22, 7, 44, 6, 9, 0)
COLUMNS = ("TIME", "PROXY", "DIR", "PEER", "METHOD", "PATH", "STATUS", "LATENCY", "SIZES")


class TapOutput(StrEnum):
    table = "table"
    json = "json"


def _size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _cell(text: str, width: int) -> str:
    if not width:
        return text
    return text.ljust(width) if len(text) <= width else text[:width - 1] + "…"


def short_peer(rec: dict[str, Any]) -> str:
    """The other side: its SPIFFE ID's account (the app, unless `mesh.service-account` names another), with its
    project when that is not the proxy's, else its address."""
    try:
        peer = parse_identity(str(rec.get("peer") or ""))
    except IdentityError:
        pass
    else:
        own = str(rec.get("proxy") or "").split(".", 1)[0]
        return peer.account if peer.namespace == own else f"{peer.namespace}/{peer.account}"
    address = str(rec.get("peer_address") or "-").rsplit(":", 1)[0]
    return f"{address} (plain)"


def row(rec: dict[str, Any]) -> Text:
    started = float(rec.get("time") or 0)
    when = time.strftime("%H:%M:%S", time.localtime(started)) + f".{int(started % 1 * 1000):03d}"
    status = str(rec.get("status") or "-")
    if rec.get("grpc_status") is not None:
        status += f"/{rec['grpc_status']}"
    proxy = str(rec.get("proxy") or "").split(".", 1)[-1]
    cells = (when, proxy, "in" if rec.get("direction") == "inbound" else "out", short_peer(rec),
             str(rec.get("method") or "-"), str(rec.get("path") or "-"), status,
             f"{float(rec.get('latency_ms') or 0):.1f}ms", f"{_size(rec.get('request_bytes'))}/"
             f"{_size(rec.get('response_bytes'))}")
    text = Text(" ".join(_cell(c, w) for c, w in zip(cells, WIDTHS, strict=True)))
    code = int(rec.get("status") or 0)
    if code >= 500 or code == 0:
        text.stylize("red")
    elif code >= 400:
        text.stylize("yellow")
    return text


def header() -> Text:
    return Text(" ".join(_cell(c, w) for c, w in zip(COLUMNS, WIDTHS, strict=True)), style="bold")


def tap(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="The service (app name, compose service or project.service).")],
    path: Annotated[str | None, typer.Option("--path", help="Only request paths that start with this.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="Only this method, or a comma list (GET,POST).")]
    = None,
    status: Annotated[str | None, typer.Option("--status", help="Only these statuses: 503, 5xx, or a comma list.")]
    = None,
    max_records: Annotated[int, typer.Option("--max", "-n", min=0, max=MAX_RECORDS,
                                             help="Stop after this many requests (0: no limit).")] = 0,
    duration: Annotated[str | None, typer.Option("--duration", "-d", help="Stop after this long, e.g. 30s "
                                                 "(default: until Ctrl-C or --max).")] = None,
    bodies: Annotated[bool, typer.Option("--bodies", help="Include request and response bodies, each cut at "
                                         "--body-limit bytes.")] = False,
    body_limit: Annotated[int, typer.Option("--body-limit", min=1, max=MAX_BODY, help="Bytes of each body "
                                            "--bodies keeps.")] = DEFAULT_BODY,
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Show the values of authorization, cookie, "
                                            "set-cookie and proxy-authorization headers (redacted by default).")]
    = False,
    save: Annotated[Path | None, typer.Option("--save", help="Also write the exchanges as a mitmproxy flow file "
                                              "(open it with `mitmproxy -r FILE` or `mitmweb -r FILE`).")] = None,
    project: ProjectOption = None,
    output: Annotated[TapOutput, typer.Option("--output", "-o", case_sensitive=False,
                                              help="table, or json: one JSON object per line.")] = TapOutput.table,
) -> int:
    """Stream the live requests through a service's sidecars, inbound and outbound (like `linkerd viz tap`)."""
    c: Context = ctx.obj
    dataplane.refuse_in_cluster(c, "tap")  # a stream from each sidecar: no one exchange to carry through exec
    until = seconds("--duration", duration) if duration else 0.0
    try:
        spec = TapSpec.parse(path, method, status, body_limit if bodies else 0, not no_redact, max_records,
                             min(until, MAX_DURATION_S))
    except TapError as exc:
        raise UsageError(f"--{exc}") from None
    flows = FlowFile(save) if save else None  # a path that cannot be written fails before anything runs
    try:
        network = c.home.settings().network
        targets = [Target(p.name, p.address_on(network) or "") for p in mesh.running(c, project, service)]
        code = run(c, service, targets, spec, until, output, flows)
    except BaseException:
        if flows is not None:
            flows.discard()
        raise
    if flows is not None:
        flows.commit()
        c.err.print(f"saved {flows.count} flows to {save} (open it with: mitmproxy -r {save})", highlight=False)
    return code


def run(c: Context, service: str, targets: list[Target], spec: TapSpec, until: float, output: TapOutput,
        flows: FlowFile | None) -> int:
    """Tap `targets` until max, duration, Ctrl-C or the end of every stream; the exit code."""
    reopen = not until or until > MAX_DURATION_S  # a sidecar ends a session after MAX_DURATION_S: open another
    session = Tap(targets, spec, reopen)
    session.start()
    try:
        _opened(c, service, session, targets)
        if output is TapOutput.table:
            c.out.print(header(), highlight=False, soft_wrap=True)
        return _follow(c, session, spec, until, len(targets), output, flows)
    except KeyboardInterrupt:  # the flows seen so far are still saved; the exit says it was cut short
        return ExitCode.INTERRUPTED
    finally:
        session.stop()


def _opened(c: Context, service: str, session: Tap, targets: list[Target]) -> None:
    """Wait until every sidecar has opened its session or refused; fail if none opened."""
    waiting = {t.name for t in targets}
    errors: list[Event] = []
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        event = session.next(deadline - time.monotonic())
        if event is None or event.proxy not in waiting:
            continue
        waiting.discard(event.proxy)
        if event.kind == "error":
            errors.append(event)
    opened = len(targets) - len(errors) - len(waiting)
    if not opened:
        raise _failure(errors, waiting)
    for event in errors:
        c.err.print(f"warning: {event.data['message']}", highlight=False)
    for name in sorted(waiting):
        c.err.print(f"warning: {name} did not answer within {OPEN_TIMEOUT_S:.0f}s; tapping the others", highlight=False)
    names = ", ".join(sorted(t.name for t in targets if t.name not in waiting and
                             t.name not in {e.proxy for e in errors}))
    c.err.print(f"tapping {opened} sidecar{'s' if opened != 1 else ''} of {service}: {names} (Ctrl-C to stop)",
                highlight=False)


def _failure(errors: list[Event], waiting: set[str]) -> MeshError:
    if not errors:
        return MeshError(f"no sidecar answered within {OPEN_TIMEOUT_S:.0f}s ({', '.join(sorted(waiting))})",
                         "check them with `meshctl proxy-status`")
    first = errors[0]
    message = first.data["message"]
    if first.status == 503:
        return Conflict(message, "each sidecar serves a few tap sessions at once; stop another `meshctl tap`")
    if first.status == 403:
        return MeshError(message, "tap is served only to the Docker host: run meshctl on the host that runs the mesh")
    if first.status == 404:
        return MeshError(message, "the sidecar runs an older proxy image: inject the app again and "
                                  "`docker compose up -d`")
    return MeshError(message, "check the sidecar with `meshctl proxy-status` and its log with `docker logs`")


def _follow(c: Context, session: Tap, spec: TapSpec, until: float, streams: int, output: TapOutput,
            flows: FlowFile | None) -> int:
    deadline = time.monotonic() + until if until else None
    records = dropped = 0
    open_streams = streams
    lost: list[str] = []
    while open_streams and not (spec.max and records >= spec.max):
        left = deadline - time.monotonic() if deadline is not None else 1.0
        if left <= 0:
            break
        event = session.next(min(left, 1.0))
        if event is None or event.kind == "start":
            continue
        if event.kind == "call":
            records += 1
            if output is TapOutput.json:
                c.out.file.write(json.dumps(stamped(event.data, "time"), separators=(",", ":")) + "\n")
                c.out.file.flush()
            else:
                c.out.print(row(event.data), highlight=False, soft_wrap=True)
            if flows is not None:
                flows.add(event.data)
            continue
        open_streams -= 1
        if event.kind == "end":
            dropped += int(event.data.get("dropped") or 0)
        else:
            lost.append(event.data["message"])
            c.err.print(f"warning: {event.data['message']}", highlight=False)
    note = f"; {dropped} dropped by the sidecars (this terminal read too slowly)" if dropped else ""
    c.err.print(f"{records} request{'s' if records != 1 else ''} tapped{note}", highlight=False)
    if lost and not open_streams and not (spec.max and records >= spec.max):
        return 1  # every stream ended, some broken: the tap did not run its course
    return 0


def register(app: typer.Typer) -> None:
    app.command("tap")(tap)

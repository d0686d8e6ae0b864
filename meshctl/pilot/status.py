"""Sync status of every proxy: what Pilot wrote for it against what the sidecar says it applied.

The sidecar's ack is its /status endpoint on :15021 (revision, hash, a rejected snapshot and why),
read over the mesh network in parallel.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshctl import const
from meshctl.context import Context
from meshctl.mesh import CERT_PEM, SNAPSHOT_JSON, MeshedPods, proxy_dir
from meshctl.pilot import dataplane
from meshctl.pilot.push import desired
from meshctl.runtime.direct import OPENER
from meshctl.runtime.nodes import shown
from meshctl.runtime.proxies import Proxy, read_each

NODE_DOWN = "NODE DOWN"


@dataclass
class ProxyStatus:
    name: str
    service: str
    version: str
    status: str
    synced: bool
    revision: int | None
    desired_revision: int | None
    last_ack: float | None
    cert_expires: float | None
    proxy_version: str
    cert_serial: str | None = None  # the certificate the sidecar has loaded (from its ack)
    trusted_roots: tuple[str, ...] = ()  # serials of the roots in the bundle it has loaded
    node: str = ""  # the Docker context of its host ("" = the manager)

    @property
    def node_down(self) -> bool:
        """Its node's engine does not answer: nothing is known of it, nothing can be asked of it."""
        return self.status.startswith(NODE_DOWN)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fetch_status(address: str, timeout: float = 1.5) -> dict[str, Any] | None:
    try:
        with OPENER.open(f"http://{address}:{const.PORT_HEALTH}/status", timeout=timeout) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _cert_expiry(ctx: Context, proxy: Proxy) -> float | None:
    return _cert_file_expiry(ctx, proxy.project, proxy.service)


def _cert_file_expiry(ctx: Context, project: str, service: str) -> float | None:
    """The expiry of the certificate in the mesh home (what the pod would present), read from the local file."""
    try:
        pem = (proxy_dir(ctx.home.proxies_dir, project, service) / CERT_PEM).read_bytes()
    except OSError:
        return None
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def status_of(ctx: Context, proxy: Proxy, network: str) -> ProxyStatus:
    want = desired(proxy_dir(ctx.home.proxies_dir, proxy.project, proxy.service)) or {}
    row = ProxyStatus(proxy.name, proxy.app, proxy.version, "NOT RUNNING", False, None, want.get("revision"), None,
                      None, "", node=proxy.node)
    address = proxy.address_on(network)
    if proxy.state != "running" or address is None:
        row.cert_expires = _cert_expiry(ctx, proxy)  # what it would present: the file (only read when no ack)
        return row
    ack = fetch_status(address)
    if ack is None:
        row.status = "UNREACHABLE (no answer on :15021/status)"
        row.cert_expires = _cert_expiry(ctx, proxy)
        return row
    row.revision, row.last_ack, row.proxy_version = ack.get("revision"), ack.get("applied_at"), \
        ack.get("proxy_version", "")
    row.cert_expires = ack.get("cert_not_after") or _cert_expiry(ctx, proxy)
    row.cert_serial = ack.get("cert_serial")
    row.trusted_roots = tuple(r.get("serial", "") for r in ack.get("trust_bundle", []))
    rejected = ack.get("rejected")
    if ack.get("hash") == want.get("hash"):
        row.status, row.synced = "SYNCED", True
    elif rejected and rejected.get("hash") == want.get("hash"):
        row.status = f"REJECTED ({rejected.get('reason')})"
    else:
        row.status = f"STALE (applied {row.revision}, current {want.get('revision')})"
    return row


def proxy_statuses(ctx: Context, only: str | None = None, project: str | None = None) -> list[ProxyStatus]:
    """Every meshed proxy's status (or `only` the one named, or one project's), acks read in parallel. In a
    cluster, a meshed pod placed on a node whose engine does not answer gets a NODE DOWN row."""
    network = ctx.home.settings().network
    found = dataplane.listing(ctx, project)

    def wanted(project_name: str, service: str, name: str, container: str = "") -> bool:
        return ((project is None or project_name == project) and (only is None or only in (name, service, container))
                and (proxy_dir(ctx.home.proxies_dir, project_name, service) / SNAPSHOT_JSON).is_file())

    mine = [p for p in found.proxies if wanted(p.project, p.service, p.name, p.container)]
    rows = read_each(mine, lambda p: status_of(ctx, p, network), workers=32)
    return sorted(rows + _down_rows(ctx, found.unreachable, {p.name for p in mine}, wanted), key=lambda r: r.name)


def _down_rows(ctx: Context, unreachable: dict[str, str], listed: set[str],
               wanted: Callable[[str, str, str], bool]) -> list[ProxyStatus]:
    """A row for every meshed pod placed on an unreachable node: what is known of it is what its files say."""
    if not unreachable:
        return []
    rows = []
    for info in MeshedPods.of(ctx.home):
        node = info.pod.node
        if node not in unreachable or info.name in listed or not wanted(info.project, info.pod.service, info.name):
            continue
        want = desired(proxy_dir(ctx.home.proxies_dir, info.project, info.pod.service)) or {}
        rows.append(ProxyStatus(info.name, info.pod.app, info.pod.version, f"{NODE_DOWN} ({shown(node)}: "
                                f"{unreachable[node]})", False, None, want.get("revision"), None,
                                _cert_file_expiry(ctx, info.project, info.pod.service), "", node=node))
    return rows


def age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int(now - ts))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def until(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

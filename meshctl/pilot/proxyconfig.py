"""What a running sidecar actually uses, read from its own admin endpoint (127.0.0.1:15000 in the pod).

Nothing is recomputed here: if the proxy runs something other than what the control plane wants, this
shows what it runs.
"""

from __future__ import annotations

import json
from typing import Any

from meshctl import const
from meshctl.context import Context
from meshctl.errors import EngineError, UsageError
from meshctl.pilot import dataplane
from meshctl.runtime.engine import engine_errors
from meshctl.runtime.proxies import Proxy

SECTIONS = ("listeners", "routes", "clusters", "endpoints", "secrets")


def find_proxy(ctx: Context, name: str) -> Proxy:
    listed = dataplane.listing(ctx)
    found = [p for p in listed.proxies if name in (p.name, p.service, p.container)]
    if not found:
        down = f" ({dataplane.down_note(listed.unreachable)})" if listed.unreachable else ""
        raise UsageError(f"no proxy named {name!r}{down}", "see `meshctl proxy-status` for the names")
    if len(found) > 1:
        raise UsageError(f"{name!r} names {len(found)} proxies ({', '.join(p.name for p in found)})",
                         "use the full project.service name")
    return found[0]


def config_dump(ctx: Context, proxy: Proxy) -> dict[str, Any]:
    if proxy.state != "running":
        raise EngineError(f"proxy {proxy.name} is not running ({proxy.state})", "start it, then ask again")
    with engine_errors(f"read the config of {proxy.name}"):
        container = dataplane.engine_of(ctx, proxy).containers.get(proxy.cid or proxy.container)
        code, out = container.exec_run(["curl", "-fsS", "--max-time", "5",
                                        f"http://127.0.0.1:{const.PORT_ADMIN}/config_dump"])
    if code != 0:
        raise EngineError(f"proxy {proxy.name} did not answer on its admin port: {out.decode(errors='replace')}",
                          f"see `docker logs {proxy.container}`")
    return dict(json.loads(out))


def rows(section: str, dump: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """A table for one section, in the spirit of istioctl proxy-config."""
    if section == "listeners":
        return ["name", "port", "direction", "mode", "excluded ports", "published ports"], [
            [entry["name"], entry["port"], entry["direction"], entry.get("mode", "-"),
             ",".join(map(str, entry.get("excluded_ports", []))) or "-",
             ",".join(map(str, entry.get("published_ports", []))) or "-"] for entry in dump["listeners"]]
    if section == "routes":
        out = []
        for vs in dump["routes"]:
            for i, rule in enumerate(vs.get("http", [])):
                dests = ", ".join(f"{d['destination']['host']}"
                                  + (f"/{d['destination']['subset']}" if d["destination"].get("subset") else "")
                                  + (f" {d['weight']}%" if "weight" in d else "") for d in rule.get("route", []))
                out.append([vs["name"], ",".join(vs.get("hosts", [])), i, "yes" if rule.get("match") else "-", dests])
        return ["virtualservice", "hosts", "rule", "match", "destinations"], out
    if section == "clusters":
        return ["service", "subsets", "identity", "policy"], [
            [c["name"], ",".join(c["subsets"]), c["identity"], (c["policy"] or {}).get("name", "-")]
            for c in dump["clusters"]]
    if section == "endpoints":
        return ["endpoint", "service", "workload", "version"], [
            [ip, e["service"], e["workload"], e["version"]] for ip, e in dump["endpoints"].items()]
    secret = dump["secrets"]
    return ["identity", "serial", "valid until", "trusted roots"], [
        [secret["identity"], secret.get("cert_serial", "-"), secret.get("cert_not_after") or "-",
         len(secret.get("trust_bundle", []))]]

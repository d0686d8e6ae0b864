"""Transparent capture: the nat rules that send the pod's TCP traffic through the proxy.

Inbound (PREROUTING): everything except health/metrics (15021, 15090) and excluded ports goes to 15006.
Outbound (OUTPUT): everything except the proxy's own uid, loopback (Docker's DNS at 127.0.0.11 lives
there) and excluded ports goes to 15001. DNS over UDP is never touched: only TCP is redirected.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
# Peers may reach health (15021) and metrics (15090) directly; every other proxy port is captured, and
# the listener refuses connections aimed at the proxy itself, so nothing can make it dial itself.
PROXY_SERVED_PORTS = (15021, 15090)


def rules(proxy_uid: int, exclude_inbound: Iterable[int] = (), exclude_outbound: Iterable[int] = ()) -> str:
    """An iptables-restore script for the nat table; applying it again replaces the mesh chains whole."""
    lines = ["*nat", ":MESH_INBOUND - [0:0]", ":MESH_OUTPUT - [0:0]",
             *(f"-A MESH_INBOUND -p tcp --dport {p} -j RETURN" for p in PROXY_SERVED_PORTS)]
    lines += [f"-A MESH_INBOUND -p tcp --dport {p} -j RETURN" for p in sorted(set(exclude_inbound))]
    lines += [f"-A MESH_INBOUND -p tcp -j REDIRECT --to-ports {INBOUND_PORT}",
              f"-A MESH_OUTPUT -m owner --uid-owner {proxy_uid} -j RETURN",
              "-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN"]
    lines += [f"-A MESH_OUTPUT -p tcp --dport {p} -j RETURN" for p in sorted(set(exclude_outbound))]
    lines += [f"-A MESH_OUTPUT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}", "COMMIT", ""]
    return "\n".join(lines)


def _jump_present(chain: str, target: str) -> bool:
    return subprocess.run(["iptables", "-t", "nat", "-C", chain, "-p", "tcp", "-j", target],
                          capture_output=True).returncode == 0


def install(proxy_uid: int, exclude_inbound: Iterable[int] = (), exclude_outbound: Iterable[int] = ()) -> None:
    script = rules(proxy_uid, exclude_inbound, exclude_outbound)
    subprocess.run(["iptables-restore", "--noflush"], input=script.encode(), check=True, capture_output=True)
    for chain, target in (("PREROUTING", "MESH_INBOUND"), ("OUTPUT", "MESH_OUTPUT")):
        if not _jump_present(chain, target):
            subprocess.run(["iptables", "-t", "nat", "-A", chain, "-p", "tcp", "-j", target], check=True,
                           capture_output=True)

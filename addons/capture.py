"""Transparent capture: the nat rules that send the pod's TCP traffic through the proxy, and their check.

Inbound (PREROUTING): everything except health/metrics (15021, 15090) and excluded ports goes to 15006.
Outbound (OUTPUT): everything except the proxy's own uid, loopback (Docker's DNS at 127.0.0.11 lives
there) and excluded ports goes to 15001. DNS over UDP is never touched: only TCP is redirected.

Any container in the pod with NET_ADMIN can change these rules, so the sidecar re-reads them (`verify`)
and puts them back (`install`). What counts as intact: MESH_INBOUND and MESH_OUTPUT hold exactly our
rules, and PREROUTING and OUTPUT hold only our jump plus Docker's embedded-DNS jump. Any other rule
there can bypass capture: ahead of our jump it skips it, after it it can still DNAT the ports we exempt.
A NOTRACK rule in the raw table keeps packets out of nat altogether, so it counts too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
# Peers may reach health (15021) and metrics (15090) directly; every other proxy port is captured, and
# the listener refuses connections aimed at the proxy itself, so nothing can make it dial itself.
PROXY_SERVED_PORTS = (15021, 15090)
MESH_CHAINS = ("MESH_INBOUND", "MESH_OUTPUT")
JUMPS = {"PREROUTING": ("MESH_INBOUND", "-p tcp -j MESH_INBOUND"), "OUTPUT": ("MESH_OUTPUT", "-p tcp -j MESH_OUTPUT")}
# Docker's embedded DNS (user-defined networks): it only matches 127.0.0.11, which MESH_OUTPUT exempts anyway.
DOCKER_DNS_JUMP = "-d 127.0.0.11/32 -j DOCKER_OUTPUT"
# The supervisor (root) writes this while the rules are being restored; the proxy (uid 1337) reads it for
# its readiness. /run is the sidecar container's own: the app shares the network namespace, not the files.
BROKEN_MARKER = Path("/run/meshctl-capture/broken")

Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]
# iptables-save prints long options short, and the match module `-p tcp` loads implicitly as `-m tcp`.
_SHORT = {"--protocol": "-p", "--destination": "-d", "--source": "-s", "--jump": "-j", "--match": "-m",
          "--goto": "-g", "--in-interface": "-i", "--out-interface": "-o", "--destination-port": "--dport",
          "--source-port": "--sport"}


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


def _quote(token: str) -> str:
    """iptables-restore's tokenizer knows double quotes only (as iptables-save writes comments)."""
    if token and not any(c in token for c in ' \t"\\\''):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def normalise(rule: str) -> str:
    """One spelling per rule, so what we wrote compares equal to what iptables-save prints back."""
    try:
        tokens = shlex.split(rule)
    except ValueError:  # unbalanced quotes: compare the text as it is
        return " ".join(rule.split())
    out: list[str] = []
    protocol = None
    i = 0
    while i < len(tokens):
        token = _SHORT.get(tokens[i], tokens[i])
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == "-p":
            protocol = value
        if token == "-m" and value is not None and value == protocol:
            i += 2  # the implicit match module of `-p tcp`
            continue
        if token in ("-d", "-s") and value is not None:
            with contextlib.suppress(ValueError):  # a host name stays as written
                value = str(ipaddress.ip_network(value, strict=False))  # 127.0.0.11 -> 127.0.0.11/32
            out += [token, value]
            i += 2
            continue
        out.append(token)
        i += 1
    return " ".join(_quote(t) for t in out)


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """iptables-save (or -restore) text -> table -> chain -> normalised rules, in order. Declared chains
    appear even when empty, so a flushed chain and a deleted one can be told apart."""
    tables: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and "]" in line:  # packet counters from iptables-save -c
            line = line.split("]", 1)[1].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), {})
        elif line == "COMMIT":
            table = None
        elif table is not None and line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif table is not None and line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) >= 2:
                table.setdefault(parts[1], []).append(normalise(parts[2] if len(parts) > 2 else ""))
    return tables


def _notrack(rule: str) -> bool:
    tokens = rule.split()
    return "NOTRACK" in tokens or "--notrack" in tokens


def verify(nat_dump: str, expected_script: str) -> list[str]:
    """What differs between the live rules (`iptables-save -t nat`, plus `-t raw` if given) and the rules
    `expected_script` installs, one short phrase each; [] when capture is intact."""
    tables = parse(nat_dump)
    nat = tables.get("nat")
    if nat is None:
        return ["the nat table is missing from iptables-save's output"]
    expected = parse(expected_script).get("nat", {})
    problems = []
    for chain in MESH_CHAINS:
        want, have = expected.get(chain, []), nat.get(chain)
        if have is None:
            problems.append(f"chain {chain} was deleted")
        elif not have and want:
            problems.append(f"{chain} was flushed")
        elif have != want:
            removed = [r for r in want if r not in have]
            added = [r for r in have if r not in want]
            problems += [f"{chain}: '{r}' was removed" for r in removed]
            problems += [f"{chain}: '{r}' was added" for r in added]
            if not removed and not added:
                problems.append(f"{chain}: rules were reordered or duplicated")
    for chain, (target, jump) in JUMPS.items():
        have = nat.get(chain, [])
        if jump not in have:
            problems.append(f"{chain} no longer jumps to {target}")
        allowed = {jump, DOCKER_DNS_JUMP} if chain == "OUTPUT" else {jump}
        for index, rule in enumerate(have):
            if rule in allowed:
                continue
            ahead = jump in have and index < have.index(jump)
            problems.append(f"{chain}: foreign rule '{rule}' {'ahead of' if ahead else 'beside'} the jump to {target}")
    for chain, chain_rules in tables.get("raw", {}).items():
        problems += [f"raw {chain}: '{r}' keeps packets out of nat" for r in chain_rules if _notrack(r)]
    return problems


def repair_script(nat_dump: str, expected_script: str) -> str:
    """An iptables-restore --noflush script that makes the live rules what `verify` expects, in one commit:
    the mesh chains whole, PREROUTING/OUTPUT rebuilt with our jump first (Docker's DNS jump kept after it:
    127.0.0.11 returns from MESH_OUTPUT and reaches it), and NOTRACK rules in raw deleted."""
    tables = parse(nat_dump)
    nat = tables.get("nat", {})
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in MESH_CHAINS)]
    lines += [line for line in expected_script.splitlines() if line.startswith("-A ")]
    for chain, (_, jump) in JUMPS.items():
        lines += [f"-F {chain}", f"-A {chain} {jump}"]
        if chain == "OUTPUT" and DOCKER_DNS_JUMP in nat.get(chain, []) and "DOCKER_OUTPUT" in nat:
            lines.append(f"-A {chain} {DOCKER_DNS_JUMP}")
    lines.append("COMMIT")
    notrack = [(chain, r) for chain, chain_rules in tables.get("raw", {}).items() for r in chain_rules if _notrack(r)]
    if notrack:
        lines += ["*raw", *(f"-D {chain} {r}" for chain, r in dict.fromkeys(notrack)), "COMMIT"]
    return "\n".join(lines) + "\n"


def dump(run: Runner = subprocess.run) -> str:
    """The live nat table, and the raw table when the kernel has one."""
    nat = run(["iptables-save", "-t", "nat"], capture_output=True, check=True).stdout.decode(errors="replace")
    raw = run(["iptables-save", "-t", "raw"], capture_output=True)
    return nat + (raw.stdout.decode(errors="replace") if raw.returncode == 0 else "")


def install(proxy_uid: int, exclude_inbound: Iterable[int] = (), exclude_outbound: Iterable[int] = (),
            run: Runner = subprocess.run) -> None:
    """Make the live rules exactly ours (first install, a port change, or a repair after tampering)."""
    script = repair_script(dump(run), rules(proxy_uid, exclude_inbound, exclude_outbound))
    run(["iptables-restore", "--noflush"], input=script.encode(), check=True, capture_output=True)


def why(exc: Any) -> str:
    """One line from a failed iptables call."""
    stderr = getattr(exc, "stderr", None)
    text = stderr.decode(errors="replace").strip() if isinstance(stderr, bytes) else ""
    return text.splitlines()[-1] if text else str(exc)

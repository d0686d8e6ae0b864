"""Transparent capture: the nat rules that send the pod's TCP traffic through the proxy, and their check.

Inbound (PREROUTING): everything except health/metrics (15021, 15090) and excluded ports goes to 15006.
Outbound (OUTPUT): everything except the proxy's own uid, loopback (Docker's DNS at 127.0.0.11 lives
there) and excluded ports goes to 15001. DNS over UDP is never touched: only TCP is redirected.

Any container in the pod with NET_ADMIN can change these rules, so the sidecar re-reads them (`verify`)
and puts them back (`install`). What counts as intact: MESH_INBOUND and MESH_OUTPUT hold exactly our
rules, and PREROUTING and OUTPUT hold only our jump plus Docker's embedded-DNS jump. Any other rule
there can bypass capture: ahead of our jump it skips it, after it it can still DNAT the ports we exempt.
A NOTRACK rule in the raw table keeps packets out of nat altogether, so it counts too.

iptables-save (the iptables-nft front end) does not show everything the kernel runs, so two more sources are
read. `nft -j list ruleset`: a native nftables table with a base chain (a nat chain at priority -101 that
DNATs first skips our REDIRECT: the kernel NATs a connection once), a base chain added with nft into
iptables' own tables, or rules iptables cannot print. `iptables-legacy-save`: rules in the x_tables backend,
which the mesh never uses. A missing `nft` or `iptables-legacy` binary means that source is not watched (the
supervisor says so at start); any other failure to read one counts as broken.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sidecar.contract import PORT_HEALTH, PORT_METRICS
from sidecar.contract import PORT_INBOUND as INBOUND_PORT
from sidecar.contract import PORT_OUTBOUND as OUTBOUND_PORT

# Peers may reach health (15021) and metrics (15090) directly; every other proxy port is captured, and
# the listener refuses connections aimed at the proxy itself, so nothing can make it dial itself.
PROXY_SERVED_PORTS = (PORT_HEALTH, PORT_METRICS)
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


def verify(nat_dump: str, expected_script: str, nft_ruleset: str | None = None,
           legacy_save: str | None = None) -> list[str]:
    """What differs between the live rules and the rules `expected_script` installs, one short phrase each;
    [] when capture is intact. `nat_dump` is iptables-save's text (nat, and raw if given); `nft_ruleset`
    (`nft -j list ruleset`) and `legacy_save` (`iptables-legacy-save`) are checked when given."""
    problems = _iptables_problems(nat_dump, expected_script)
    if nft_ruleset is not None:
        problems += foreign_nft(nft_ruleset, nat_dump)
    if legacy_save is not None:
        problems += legacy_rules(legacy_save)
    return problems


def _iptables_problems(nat_dump: str, expected_script: str) -> list[str]:
    """What iptables-save shows that differs from `expected_script`'s rules."""
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




def repair_script(nat_dump: str, expected_script: str, keep: Sequence[str] = ()) -> str:
    """An iptables-restore --noflush script that makes the live rules what `verify` expects, in one commit:
    the mesh chains whole, PREROUTING/OUTPUT rebuilt with our jump first (Docker's DNS jump kept after it:
    127.0.0.11 returns from MESH_OUTPUT and reaches it), and NOTRACK rules in raw deleted. `keep` holds
    Docker's DNS rules (`docker_dns`) from an earlier dump: they are put back when DOCKER_OUTPUT is gone
    (the nat table was rebuilt because nft rules had made it unreadable to iptables)."""
    tables = parse(nat_dump)
    nat = tables.get("nat", {})
    restore_docker = bool(keep) and "DOCKER_OUTPUT" not in nat
    present = {f"-A {chain} {rule}" for chain, chain_rules in nat.items() for rule in chain_rules}
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in MESH_CHAINS)]
    if restore_docker:
        lines += [":DOCKER_OUTPUT - [0:0]", ":DOCKER_POSTROUTING - [0:0]"]
    lines += [line for line in expected_script.splitlines() if line.startswith("-A ")]
    for chain, (_, jump) in JUMPS.items():
        lines += [f"-F {chain}", f"-A {chain} {jump}"]
        docker_jump = f"-A {chain} {DOCKER_DNS_JUMP}"
        if chain == "OUTPUT" and ((docker_jump in present and "DOCKER_OUTPUT" in nat)
                                  or (restore_docker and docker_jump in keep)):
            lines.append(docker_jump)
    if restore_docker:
        # DOCKER_* were just declared, so empty; Docker's POSTROUTING jump may have survived
        lines += [line for line in keep if not line.startswith("-A OUTPUT ")
                  and (line.split()[1].startswith("DOCKER_") or line not in present)]
    lines.append("COMMIT")
    notrack = [(chain, r) for chain, chain_rules in tables.get("raw", {}).items() for r in chain_rules if _notrack(r)]
    if notrack:
        lines += ["*raw", *(f"-D {chain} {r}" for chain, r in dict.fromkeys(notrack)), "COMMIT"]
    return "\n".join(lines) + "\n"


# --- Docker's embedded DNS: the only rules besides ours that may live in the pod's nat tables --------------

DNS_IP = "127.0.0.11"
_DOCKER_DNS = {  # chain -> Docker's rule, as `normalise` spells it (moby libnetwork's resolver)
    "OUTPUT": re.compile(r"-d 127\.0\.0\.11/32 -j DOCKER_OUTPUT"),
    "POSTROUTING": re.compile(r"-d 127\.0\.0\.11/32 -j DOCKER_POSTROUTING"),
    "DOCKER_OUTPUT": re.compile(
        r"-d 127\.0\.0\.11/32 -p (tcp|udp) --dport 53 -j DNAT --to-destination 127\.0\.0\.11:\d{1,5}"),
    "DOCKER_POSTROUTING": re.compile(r"-s 127\.0\.0\.11/32 -p (tcp|udp) --sport \d{1,5} -j SNAT --to-source :53"),
}


def _is_docker_dns(chain: str, rule: str) -> bool:
    pattern = _DOCKER_DNS.get(chain)
    return pattern is not None and pattern.fullmatch(rule) is not None


def docker_dns(save_text: str) -> list[str]:
    """Docker's embedded-DNS rules in an iptables-save text's nat table, as `-A CHAIN rule` lines. They only
    match 127.0.0.11 (which capture exempts) and only NAT to it."""
    nat = parse(save_text).get("nat", {})
    return [f"-A {chain} {rule}" for chain, chain_rules in nat.items() for rule in chain_rules
            if _is_docker_dns(chain, rule)]


# --- the legacy x_tables backend: iptables-nft's save does not show it; the mesh never uses it -------------

LEGACY_TABLES = ("nat", "raw", "mangle")


def legacy_rules(save_text: str) -> list[str]:
    """Every rule in `iptables-legacy-save`'s nat, raw and mangle tables, except Docker's DNS rules (a host
    whose Docker uses the legacy backend writes them there)."""
    return [f"iptables-legacy {table} {chain}: '{rule}' (the mesh never uses the legacy backend)"
            for table, chains in parse(save_text).items() if table in LEGACY_TABLES
            for chain, chain_rules in chains.items() for rule in chain_rules
            if not (table == "nat" and _is_docker_dns(chain, rule))]


def legacy_repair_script(save_text: str) -> str:
    """An iptables-legacy-restore script (without --noflush: each table named is replaced whole) that empties
    the legacy tables holding rules, keeping only Docker's DNS rules; "" when there is nothing to repair."""
    lines: list[str] = []
    for table, chains in parse(save_text).items():
        if table not in LEGACY_TABLES or not any(chains.values()):
            continue
        kept = [(chain, rule) for chain, chain_rules in chains.items() for rule in chain_rules
                if table == "nat" and _is_docker_dns(chain, rule)]
        if len(kept) == sum(len(chain_rules) for chain_rules in chains.values()):
            continue  # only Docker's DNS rules
        declared = dict.fromkeys(chain for chain, _ in kept if chain.startswith("DOCKER_"))
        lines += [f"*{table}", *(f":{chain} - [0:0]" for chain in declared),
                  *(f"-A {chain} {rule}" for chain, rule in kept), "COMMIT"]
    return "\n".join(lines) + "\n" if lines else ""


# --- native nftables: tables and chains iptables-save does not show ---------------------------------------

# iptables-nft's own base chains: table -> chain -> (type, hook, priority). Anything else hooked into one of
# these tables was added with nft, and iptables-save leaves it out (with only a comment).
IPTABLES_CHAINS: dict[str, dict[str, tuple[str, str, int]]] = {
    "nat": {"PREROUTING": ("nat", "prerouting", -100), "INPUT": ("nat", "input", 100),
            "OUTPUT": ("nat", "output", -100), "POSTROUTING": ("nat", "postrouting", 100)},
    "raw": {c: ("filter", c.lower(), -300) for c in ("PREROUTING", "OUTPUT")},
    "mangle": {c: ("route" if c == "OUTPUT" else "filter", c.lower(), -150)
               for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")},
    "filter": {c: ("filter", c.lower(), 0) for c in ("INPUT", "FORWARD", "OUTPUT")},
    "security": {c: ("filter", c.lower(), 150) for c in ("INPUT", "FORWARD", "OUTPUT")},
}
# Docker's nftables firewall backend puts its DNS rules in this table of the container's namespace.
DOCKER_DNS_TABLE = ("ip", "docker-dns")

Finding = tuple[str, "dict[str, Any] | None"]  # (problem, the nft JSON command that removes it)


def foreign_nft(ruleset_json: str, iptables_save: str | None = None) -> list[str]:
    """What in `nft -j list ruleset` can bypass capture and iptables-save does not show: a base chain in a
    table iptables does not own, a chain hooked into iptables' own tables that is not one of iptables'
    chains, and (given iptables-save's text) rules iptables cannot print. IPv6 tables iptables owns are not
    read: the mesh captures IPv4 only."""
    return [problem for problem, _ in _nft_findings(ruleset_json, iptables_save)]


def nft_repairs(ruleset_json: str, iptables_save: str | None = None) -> list[dict[str, Any]]:
    """The commands (`nft -j -f -`, one transaction) that delete what `foreign_nft` names: foreign tables,
    foreign chains in iptables' tables, and tables iptables cannot print (the nat table is then rebuilt
    by iptables-restore). In Docker's docker-dns table only what is not Docker's goes."""
    commands: list[dict[str, Any]] = []
    for _, command in _nft_findings(ruleset_json, iptables_save):
        if command is not None and command not in commands:
            commands.append(command)
    return commands


def _nft_findings(ruleset_json: str, iptables_save: str | None) -> list[Finding]:
    try:
        items = json.loads(ruleset_json)["nftables"]
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise TypeError("'nftables' is not a list of objects")
        tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
        rules_in: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for item in items:
            if "table" in item:
                tables.setdefault((item["table"]["family"], item["table"]["name"]), [])
            elif "chain" in item:
                chain = item["chain"]
                tables.setdefault((chain["family"], chain["table"]), []).append(chain)
            elif "rule" in item:
                rule = item["rule"]
                rules_in.setdefault((rule["family"], rule["table"], rule["chain"]), []).append(rule)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # fail closed: unreadable is not intact
        return [(f"cannot read nft's ruleset ({type(exc).__name__}: {exc})", None)]
    saved = parse(iptables_save) if iptables_save is not None else None
    findings: list[Finding] = []
    for (family, name), chains in tables.items():
        if family in ("ip", "ip6") and name in IPTABLES_CHAINS:
            if family == "ip":
                findings += _own_table(name, chains, rules_in, saved)
        elif (family, name) == DOCKER_DNS_TABLE:
            findings += _docker_dns_table(chains, rules_in)
        else:
            findings += [(f"nft table {family} {name} is not iptables' and hooks {_hook(c)}",
                          {"delete": {"table": {"family": family, "name": name}}}) for c in chains if "hook" in c]
    return findings


def _hook(chain: dict[str, Any]) -> str:
    return f"{chain['hook']} at priority {chain.get('prio')} (chain {chain['name']}, type {chain.get('type')})"


def _own_table(name: str, chains: list[dict[str, Any]], rules_in: dict[tuple[str, str, str], list[dict[str, Any]]],
               saved: dict[str, dict[str, list[str]]] | None) -> list[Finding]:
    findings: list[Finding] = []
    theirs = []
    for chain in chains:
        standard = IPTABLES_CHAINS[name].get(chain["name"])
        if "hook" in chain and (chain.get("type"), chain["hook"], chain.get("prio")) != standard:
            findings.append((f"nft table ip {name} holds a chain iptables does not show, hooked at {_hook(chain)}",
                             {"delete": {"chain": {"family": "ip", "table": name, "name": chain["name"]}}}))
        else:
            theirs.append(chain["name"])
    if saved is None:
        return findings
    shown = saved.get(name)
    hidden = {c: len(rules_in.get(("ip", name, c), [])) - len((shown or {}).get(c, [])) for c in theirs}
    if any(n > 0 for n in hidden.values()):
        where = ", ".join(f"{c} ({n})" for c, n in hidden.items() if n > 0)
        what = ("rules iptables cannot print (added with nft), so iptables-save leaves the table out" if shown is None
                else f"rules iptables-save does not show: {where}")
        findings.append((f"nft table ip {name} holds {what}", {"delete": {"table": {"family": "ip", "name": name}}}))
    return findings


def _docker_dns_table(chains: list[dict[str, Any]],
                      rules_in: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[Finding]:
    """Docker's own table passes when it holds only Docker's kind of rule: NAT for 127.0.0.11, to 127.0.0.11."""
    family, table = DOCKER_DNS_TABLE
    findings: list[Finding] = []
    for chain in chains:
        if "hook" not in chain:
            continue
        if chain.get("type") != "nat" or chain["hook"] not in ("output", "postrouting"):
            findings.append((f"nft table {family} {table} holds a chain that is not Docker's, hooked at {_hook(chain)}",
                             {"delete": {"chain": {"family": family, "table": table, "name": chain["name"]}}}))
            continue
        for rule in rules_in.get((family, table, chain["name"]), []):
            if not _docker_dns_expr(rule.get("expr")):
                findings.append((f"nft table {family} {table} chain {chain['name']} holds a rule that is not Docker's "
                                 f"DNS rule (handle {rule.get('handle')})",
                                 {"delete": {"rule": {"family": family, "table": table, "chain": chain["name"],
                                                      "handle": rule.get("handle")}}}))
    return findings


def _docker_dns_expr(expr: Any) -> bool:
    """First `ip daddr == 127.0.0.11` (or saddr), then only matches, counters and NAT to 127.0.0.11."""
    if not isinstance(expr, list) or not expr or not all(isinstance(e, dict) and len(e) == 1 for e in expr):
        return False
    first = expr[0].get("match")
    payload = first.get("left", {}).get("payload", {}) if isinstance(first, dict) else {}
    if not (isinstance(payload, dict) and payload.get("protocol") == "ip" and payload.get("field") in ("daddr", "saddr")
            and first.get("op") == "==" and first.get("right") == DNS_IP):
        return False
    for e in expr:
        (key, value), = e.items()
        if key not in ("match", "counter", "dnat", "snat"):
            return False
        if key in ("dnat", "snat") and (not isinstance(value, dict) or value.get("addr", DNS_IP) != DNS_IP):
            return False
    return True


# --- reading and repairing the live rules ------------------------------------------------------------------

class Live(NamedTuple):
    """The three views of the pod's netfilter rules; None: that tool is not installed, so it is not watched."""
    iptables: str
    nft: str | None
    legacy: str | None


def dump(run: Runner = subprocess.run) -> Live:
    """The live rules: iptables-save (every table), nft's ruleset as JSON, and the legacy backend's tables."""
    return Live(_read(run, ["iptables-save"]), _optional(run, ["nft", "-j", "list", "ruleset"]),
                _optional(run, ["iptables-legacy-save"]))


def _read(run: Runner, argv: list[str]) -> str:
    return run(argv, capture_output=True, check=True).stdout.decode(errors="replace")


def _optional(run: Runner, argv: list[str]) -> str | None:
    try:
        return _read(run, argv)
    except FileNotFoundError:  # not installed: nothing to see there (only this; any other failure is broken)
        return None


def watched(live: Live) -> str:
    """One line for the log: which views the self-check reads."""
    sources = (("nft", "native nftables rules", live.nft), ("iptables-legacy", "legacy iptables rules", live.legacy))
    read = ", ".join(["iptables-save", *(tool for tool, _, text in sources if text is not None)])
    missing = "; ".join(f"{tool} is not installed, so {what} are not watched"
                        for tool, what, text in sources if text is None)
    return f"capture self-check reads {read}" + (f" ({missing})" if missing else "")


def check(live: Live, expected_script: str) -> list[str]:
    """`verify` on all three views."""
    return verify(live.iptables, expected_script, live.nft, live.legacy)


def install(proxy_uid: int, exclude_inbound: Iterable[int] = (), exclude_outbound: Iterable[int] = (),
            run: Runner = subprocess.run, keep: Sequence[str] = ()) -> Live:
    """Make the live rules exactly ours (first install, a port change, or a repair after tampering): nft
    tables and chains that can bypass capture deleted (one nft transaction), the legacy tables emptied, then
    the nat rules restored in one iptables-restore commit. `keep`: Docker's DNS rules from an earlier dump,
    for when the nat table had to be rebuilt. Returns what was live before."""
    live = dump(run)
    current = live.iptables
    commands = nft_repairs(live.nft, live.iptables) if live.nft is not None else []
    if commands:
        run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": commands}).encode(), check=True,
            capture_output=True)
        current = _read(run, ["iptables-save"])
    legacy = legacy_repair_script(live.legacy) if live.legacy is not None else ""
    if legacy:
        run(["iptables-legacy-restore"], input=legacy.encode(), check=True, capture_output=True)
    script = repair_script(current, rules(proxy_uid, exclude_inbound, exclude_outbound),
                           docker_dns(live.iptables) or keep)
    run(["iptables-restore", "--noflush"], input=script.encode(), check=True, capture_output=True)
    return live


def why(exc: Any) -> str:
    """One line from a failed iptables call."""
    stderr = getattr(exc, "stderr", None)
    text = stderr.decode(errors="replace").strip() if isinstance(stderr, bytes) else ""
    return text.splitlines()[-1] if text else str(exc)

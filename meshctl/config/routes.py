"""`meshctl route set`: turn flags into Istio VirtualService and DestinationRule edits, as pure functions.

A service's VirtualService is the one whose hosts name it (created as SERVICE when there is none). A rule
is identified by its match: `route set` without `--match` edits the catch-all rule, which is kept last;
with `--match` it edits the rule with exactly those conditions, or inserts one before the catch-all.
Flags given change the rule, flags left out keep what it had (`--reset` starts it afresh). Every subset
routed to gets a DestinationRule subset selecting the version of the same name. With a namespace (`-p`),
only that compose project's resources are read and written; without one, those with no namespace.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from meshctl.config.hosts import canonical
from meshctl.config.kinds import find_kind
from meshctl.config.resources import Resource, namespace_of, qualified_name, semantic_problems
from meshctl.config.schema import header_name_problem, header_value_problem, parse_duration, regex_problem
from meshctl.errors import UsageError
from sidecar.policy import RETRY_CONDITIONS as RETRY_ON

API_VERSION = "networking.istio.io/v1"
MATCH_RE = re.compile(r"^(?P<field>header|query|path|uri|method)(?::(?P<name>[A-Za-z0-9_.-]+))?"
                      r"(?P<op>\^=|~=|=)(?P<value>.*)$")
OPS = {"=": "exact", "^=": "prefix", "~=": "regex"}
STATUS_RE = re.compile(r"[1-5][0-9][0-9]")  # a status code in --retry-on
MATCH_HELP = ("header:NAME=VALUE, path=/exact, path^=/prefix, path~=regex, method=GET, query:NAME=VALUE; "
              "'=' exact, '^=' prefix, '~=' regex")


def parse_match(expressions: list[str]) -> dict[str, Any]:
    """['header:end-user=jason', 'path^=/api'] -> one Istio HTTPMatchRequest (all conditions must hold)."""
    match: dict[str, Any] = {}
    for expr in expressions:
        m = MATCH_RE.fullmatch(expr)
        if not m:
            raise UsageError(f"--match {expr!r} is not a condition", f"write it like {MATCH_HELP}")
        kind, name, op, value = m["field"], m["name"], OPS[m["op"]], m["value"]
        problem = regex_problem(value) if op == "regex" else None
        if problem:
            raise UsageError(f"--match {expr!r}: {problem}")
        if kind in ("header", "query"):
            if not name:
                raise UsageError(f"--match {expr!r} names no {kind}", f"write it like {kind}:NAME=VALUE")
            key = "headers" if kind == "header" else "queryParams"
            match.setdefault(key, {})[name.lower() if kind == "header" else name] = {op: value}
        elif name:
            raise UsageError(f"--match {expr!r}: {kind} takes no name", f"write it like {kind}=VALUE")
        else:
            match["uri" if kind in ("path", "uri") else "method"] = {op: value.upper() if kind == "method" else value}
    return match


def parse_targets(values: list[str]) -> list[tuple[str, float | None]]:
    """['v1=90', 'v2'] -> [('v1', 90), ('v2', 10)]: one destination without a weight takes the rest."""
    parsed: list[tuple[str, float | None]] = []
    for value in values:
        subset, _, weight = value.partition("=")
        if not subset:
            raise UsageError(f"--to {value!r} names no subset", "write it like --to v1=90 --to v2=10")
        if weight:
            try:
                number = float(weight)
            except ValueError:
                raise UsageError(f"--to {value!r}: weight {weight!r} is not a number",
                                 "write it like --to v1=90 --to v2=10") from None
            if not 0 <= number <= 100:
                raise UsageError(f"--to {value!r}: weight must be from 0 to 100")
            parsed.append((subset, int(number) if number.is_integer() else number))
        else:
            parsed.append((subset, None))
    if len({s for s, _ in parsed}) != len(parsed):
        raise UsageError("--to names a subset twice", "give each subset once")
    open_ = [i for i, (_, w) in enumerate(parsed) if w is None]
    if len(parsed) > 1:
        if len(open_) > 1:
            raise UsageError("--to: give a weight to every subset but at most one",
                             "write it like --to v1=90 --to v2=10")
        given = sum(w for _, w in parsed if w is not None)
        if open_:
            rest = 100 - given
            if rest < 0:  # the subset without a weight would get a negative one
                raise UsageError(f"--to: weights add up to {given:g}, more than 100",
                                 "make the weights add up to 100")
            parsed[open_[0]] = (parsed[open_[0]][0], int(rest) if float(rest).is_integer() else rest)
            given = 100
        if abs(given - 100) > 1e-9:
            raise UsageError(f"--to: weights add up to {given:g}, not 100", "make the weights add up to 100")
    return parsed


def _duration(flag: str, value: str) -> str:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return value


def _percent(flag: str, value: float) -> dict[str, float]:
    if not 0 <= value <= 100:
        raise UsageError(f"{flag}: {value:g} must be a number from 0 to 100")
    return {"value": value}


def _pairs(flag: str, values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {value!r} is not NAME=VALUE", f"write it like {flag} x-canary=true")
        problem = header_name_problem(name) or header_value_problem(text)
        if problem:
            raise UsageError(f"{flag} {value!r}: {problem}", f"write it like {flag} x-canary=true")
        out[name.lower()] = text
    return out


def _header_names(flag: str, names: list[str]) -> list[str]:
    for name in names:
        problem = header_name_problem(name)
        if problem:
            raise UsageError(f"{flag} {name!r}: {problem}", f"write it like {flag} x-debug")
    return [name.lower() for name in names]


@dataclass
class RouteEdit:
    """What `route set` was asked to change; None and empty mean: keep what the rule has."""
    match: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    timeout: str | None = None
    retries: int | None = None
    per_try_timeout: str | None = None
    retry_on: str | None = None
    delay: str | None = None
    delay_percent: float = 100.0
    abort: int | None = None
    abort_percent: float = 100.0
    mirror: str | None = None
    mirror_percent: float = 100.0
    set_headers: list[str] = field(default_factory=list)
    add_headers: list[str] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
    set_response_headers: list[str] = field(default_factory=list)
    add_response_headers: list[str] = field(default_factory=list)
    remove_response_headers: list[str] = field(default_factory=list)
    reset: bool = False


def _header_ops(set_: list[str], add: list[str], remove: list[str], flag: str) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    if set_:
        ops["set"] = _pairs(f"--set-{flag}", set_)
    if add:
        ops["add"] = _pairs(f"--add-{flag}", add)
    if remove:
        ops["remove"] = _header_names(f"--remove-{flag}", remove)
    return ops


def edit_rule(rule: dict[str, Any], service: str, edit: RouteEdit, versions: set[str]) -> dict[str, Any]:
    """The rule after `edit`; subsets are checked against the versions that exist."""
    rule = {} if edit.reset else copy.deepcopy(rule)
    match = parse_match(edit.match)
    if match:
        rule["match"] = [match]
    if edit.to:
        targets = parse_targets(edit.to)
        unknown = [s for s, _ in targets if s not in versions]
        if unknown:
            known = ", ".join(sorted(versions)) or "none"
            raise UsageError(f"--to {unknown[0]}: {service} has no version {unknown[0]!r} (its versions: {known})",
                             "deploy that version (label `version`) first, or pick one of its versions")
        routes = [{"destination": {"host": service, "subset": s}, **({} if w is None else {"weight": w})}
                  for s, w in targets]
        if len(routes) == 1:
            routes[0].pop("weight", None)
        rule["route"] = routes
    rule.setdefault("route", [{"destination": {"host": service}}])
    if edit.timeout is not None:
        rule["timeout"] = _duration("--timeout", edit.timeout)
    if edit.retries is not None or edit.per_try_timeout or edit.retry_on:
        retries = dict(rule.get("retries") or {})
        if edit.retries is not None:
            retries["attempts"] = edit.retries
        if edit.per_try_timeout:
            retries["perTryTimeout"] = _duration("--per-try-timeout", edit.per_try_timeout)
        if edit.retry_on:
            bad = [t for t in edit.retry_on.split(",") if t.strip() not in RETRY_ON
                   and not STATUS_RE.fullmatch(t.strip())]
            if bad:
                raise UsageError(f"--retry-on {bad[0]!r} is not a retry condition",
                                 f"use status codes or {', '.join(sorted(RETRY_ON))}")
            retries["retryOn"] = edit.retry_on
        rule["retries"] = retries
    if edit.delay is not None or edit.abort is not None:
        fault = dict(rule.get("fault") or {})
        if edit.delay is not None:
            fault["delay"] = {"fixedDelay": _duration("--delay", edit.delay),
                              "percentage": _percent("--delay-percent", edit.delay_percent)}
        if edit.abort is not None:
            if not 200 <= edit.abort <= 599:
                raise UsageError(f"--abort {edit.abort} is not an HTTP status (200-599)")
            fault["abort"] = {"httpStatus": edit.abort, "percentage": _percent("--abort-percent", edit.abort_percent)}
        rule["fault"] = fault
    if edit.mirror is not None:
        if edit.mirror not in versions:
            raise UsageError(f"--mirror {edit.mirror}: {service} has no version {edit.mirror!r}",
                             f"its versions: {', '.join(sorted(versions))}")
        rule["mirror"] = {"host": service, "subset": edit.mirror}
        rule["mirrorPercentage"] = _percent("--mirror-percent", edit.mirror_percent)
    request = _header_ops(edit.set_headers, edit.add_headers, edit.remove_headers, "header")
    response = _header_ops(edit.set_response_headers, edit.add_response_headers, edit.remove_response_headers,
                           "response-header")
    if request or response:
        headers = dict(rule.get("headers") or {})
        if request:
            headers["request"] = {**headers.get("request", {}), **request}
        if response:
            headers["response"] = {**headers.get("response", {}), **response}
        rule["headers"] = headers
    return rule


def _names(r: Resource, service: str, namespace: str | None) -> bool:
    """Whether `r` is in `namespace` and one of its hosts names `service` there."""
    hosts = r["spec"].get("hosts", []) if r["kind"] == "VirtualService" else [r["spec"].get("host")]
    return namespace_of(r) == namespace and any(canonical(str(h), namespace) == (namespace, service.lower())
                                                for h in hosts)


def find_virtual_service(resources: list[Resource], service: str, namespace: str | None = None) -> Resource | None:
    return next((r for r in resources if r["kind"] == "VirtualService" and _names(r, service, namespace)), None)


def find_destination_rule(resources: list[Resource], service: str, namespace: str | None = None) -> Resource | None:
    return next((r for r in resources if r["kind"] == "DestinationRule" and _names(r, service, namespace)), None)


def _new(kind: str, name: str, spec: dict[str, Any], namespace: str | None) -> Resource:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def ensure_subsets(resources: list[Resource], service: str, subsets: set[str], namespace: str | None = None) -> None:
    """Every subset routed to is defined, selecting the version of its name (Istio needs the DestinationRule)."""
    if not subsets:
        return
    dr = find_destination_rule(resources, service, namespace)
    if dr is None:
        dr = _new("DestinationRule", service, {"host": service, "subsets": []}, namespace)
        resources.append(dr)
    defined = {s["name"] for s in dr["spec"].setdefault("subsets", [])}
    for name in sorted(subsets - defined):
        dr["spec"]["subsets"].append({"name": name, "labels": {"version": name}})


def routed_subsets(spec: dict[str, Any]) -> set[str]:
    found = {d["destination"]["subset"] for rule in spec.get("http", []) for d in rule.get("route", [])
             if d["destination"].get("subset")}
    mirrored = {rule["mirror"]["subset"] for rule in spec.get("http", []) if (rule.get("mirror") or {}).get("subset")}
    return found | mirrored


def set_route(resources: list[Resource], service: str, edit: RouteEdit, versions: set[str],
              namespace: str | None = None) -> list[Resource]:
    """`resources` with the edit made (a new list; the input is left alone). `versions`: those of the service
    (in project `namespace`, when given)."""
    if not versions:
        where = f" in project {namespace!r}" if namespace else ""
        raise UsageError(f"no meshed service is called {service!r}{where}",
                         "route a service by its `app` label; see `meshctl proxy-status`")
    out = copy.deepcopy(resources)
    vs = find_virtual_service(out, service, namespace)
    if vs is None:
        vs = _new("VirtualService", service, {"hosts": [service], "http": []}, namespace)
        out.append(vs)
    rules: list[dict[str, Any]] = vs["spec"].setdefault("http", [])
    match = parse_match(edit.match)
    index = next((i for i, r in enumerate(rules) if (r.get("match") or [{}]) == [match or {}]), None)
    new = edit_rule(rules[index] if index is not None else {}, service, edit, versions)
    if index is not None:
        rules[index] = new
    elif match:
        catch_all = next((i for i, r in enumerate(rules) if not r.get("match")), len(rules))
        rules.insert(catch_all, new)  # matched rules go before the catch-all, or they would never be reached
    else:
        rules.append(new)
    ensure_subsets(out, service, routed_subsets(vs["spec"]), namespace)
    _check(out)
    return out


def delete_route(resources: list[Resource], service: str, match_exprs: list[str],
                 namespace: str | None = None) -> list[Resource]:
    """Without a match: the service's VirtualService goes. With one: only that rule (and the VS if it empties)."""
    out = copy.deepcopy(resources)
    vs = find_virtual_service(out, service, namespace)
    if vs is None:
        where = f" in project {namespace!r}" if namespace else " without a project (try -p PROJECT)"
        raise UsageError(f"{service} has no route{where}", "see `meshctl route list`")
    if not match_exprs:
        return [r for r in out if r is not vs]
    match = parse_match(match_exprs)
    rules = vs["spec"].get("http", [])
    kept = [r for r in rules if (r.get("match") or [{}]) != [match]]
    if len(kept) == len(rules):
        raise UsageError(f"{service} has no rule matching {' '.join(match_exprs)}",
                         f"see `meshctl route get {service}`")
    if not kept:
        return [r for r in out if r is not vs]
    vs["spec"]["http"] = kept
    return out


def _check(resources: list[Resource]) -> None:
    for r in resources:
        kind = find_kind(r["kind"])
        assert kind is not None
        problems = semantic_problems(kind, r["spec"], f"{r['kind']} {qualified_name(r)}")
        if problems:
            raise UsageError(problems[0], "nothing was changed", details=problems)


def describe_match(rule: dict[str, Any]) -> str:
    """A rule's match in `--match` syntax, for tables."""
    back = {v: k for k, v in OPS.items()}
    parts = []
    for m in rule.get("match") or []:
        conds = []
        for name, spec in (m.get("headers") or {}).items():
            op, value = next(iter(spec.items()))
            conds.append(f"header:{name}{back[op]}{value}")
        for name, spec in (m.get("queryParams") or {}).items():
            op, value = next(iter(spec.items()))
            conds.append(f"query:{name}{back[op]}{value}")
        for field_ in ("uri", "method"):
            if field_ in m:
                op, value = next(iter(m[field_].items()))
                conds.append(f"{'path' if field_ == 'uri' else 'method'}{back[op]}{value}")
        parts.append(" & ".join(conds))
    return " | ".join(parts) or "*"


def describe_destinations(rule: dict[str, Any]) -> str:
    out = []
    for d in rule.get("route", []):
        dest = d["destination"]
        name = dest.get("subset") or dest["host"]
        out.append(f"{name} {d['weight']:g}%" if "weight" in d else name)
    return ", ".join(out) or "-"

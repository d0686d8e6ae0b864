"""A small schema language for Istio-shaped resources: every problem is collected with its path.

A spec is a dict of field -> type, where a type is one of the leaf names below, a nested dict, a
one-element list `[type]` (a list of that type), or `{"*": type}` (a map with free keys, each checked as the leaf
`"*key"` names when it is given). Fields not in
the schema are errors: a field we do not support is named, never silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from sidecar import grpc, regex
from sidecar.contract import parse_duration as parse_duration  # Istio's durations, as the sidecar reads them
from sidecar.policy import RETRY_CONDITIONS, STATUS_RE

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
PORT_RE = re.compile(r"[0-9]{1,5}")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token
HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR/LF would split the message; Envoy refuses these

Schema = dict[str, Any]


def is_port(value: Any) -> bool:
    """A port number, or its decimal text (YAML map keys, Istio's string lists, compose's port specs)."""
    if isinstance(value, bool):
        return False
    text = str(value) if isinstance(value, int | str) else ""
    return PORT_RE.fullmatch(text) is not None and 0 < int(text) < 65536


def regex_problem(value: str) -> str | None:
    """Why `value` is not a regex the sidecar can run, or None: the sidecar's own RE2 check, same options."""
    return regex.problem(value)


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be an HTTP header name, or None."""
    if HEADER_NAME_RE.fullmatch(name):
        return None
    return f"{name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be an HTTP header value, or None: control characters would corrupt the message."""
    bad = HEADER_VALUE_BAD.search(value)
    return None if bad is None else f"{value!r} holds the control character {bad.group()!r}, not allowed in a header"


def _leaf(kind: str, value: Any, path: str) -> str | None:
    if kind == "string":
        return None if isinstance(value, str) else f"{path}: must be a string"
    if kind in ("header", "header-value"):
        if not isinstance(value, str):
            return f"{path}: must be a string"
        problem = header_name_problem(value) if kind == "header" else header_value_problem(value)
        return f"{path}: {problem}" if problem else None
    if kind == "name":
        return None if isinstance(value, str) and NAME_RE.fullmatch(value) else \
            f"{path}: {value!r} must be lower-case letters, digits, '-' and '.'"
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else \
            f"{path}: must be a whole number >= 0"
    if kind == "port":
        return None if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536 else \
            f"{path}: {value!r} is not a port number"
    if kind == "status":
        return None if isinstance(value, int) and not isinstance(value, bool) and 200 <= value <= 599 else \
            f"{path}: {value!r} is not an HTTP status (200-599)"
    if kind == "grpc-status":
        if grpc.status_code(value) is not None:
            return None
        return (f"{path}: {value!r} is not a gRPC status: use a name such as UNAVAILABLE "
                f"({', '.join(grpc.STATUS_CODES)}) or a number 0-16")
    if kind == "retry-on":
        if not isinstance(value, str):
            return f"{path}: must be a comma-separated string such as 5xx,connect-failure"
        tokens = [t.strip() for t in value.split(",") if t.strip()]
        bad = [t for t in tokens if t not in RETRY_CONDITIONS and not STATUS_RE.fullmatch(t)]
        return None if not bad else (f"{path}: {', '.join(repr(t) for t in bad)} is not a retry condition: use "
                                     f"HTTP status codes or {', '.join(sorted(RETRY_CONDITIONS))}")
    if kind == "bool":
        return None if isinstance(value, bool) else f"{path}: must be true or false"
    if kind == "percent":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100
        return None if ok else f"{path}: {value!r} must be a number from 0 to 100"
    if kind == "duration":
        if not isinstance(value, str):
            return f"{path}: must be a duration string such as 1.5s"
        try:
            parse_duration(value)
        except ValueError as exc:
            return f"{path}: {exc}"
        return None
    if kind == "regex":
        if not isinstance(value, str):
            return f"{path}: must be a regular expression string"
        problem = regex_problem(value)
        return f"{path}: {problem}" if problem else None
    if kind == "cidr":
        try:
            if isinstance(value, str):
                ipaddress.ip_network(value, strict=False)
                return None
        except ValueError:
            pass
        return f"{path}: {value!r} is not an IP address or CIDR block (e.g. 10.0.0.0/8 or 192.0.2.7)"
    if kind == "url":
        ok = isinstance(value, str) and value.startswith(("http://", "https://")) and len(value) > 8
        return None if ok else f"{path}: {value!r} must be an http(s) URL, e.g. http://zipkin:9411/api/v2/spans"
    if kind.startswith("enum:"):
        choices = kind[5:].split("|")
        return None if value in choices else f"{path}: {value!r} must be one of {', '.join(choices)}"
    raise AssertionError(f"unknown schema leaf {kind}")


def validate(value: Any, schema: Any, path: str, unsupported: dict[str, str] | None = None) -> list[str]:
    """Every problem with `value` against `schema`; `unsupported` maps known-but-unsupported fields to why."""
    if isinstance(schema, str):
        problem = _leaf(schema, value, path)
        return [problem] if problem else []
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: must be a list"]
        return [p for i, item in enumerate(value) for p in validate(item, schema[0], f"{path}[{i}]", unsupported)]
    if not isinstance(value, dict):
        return [f"{path}: must be a mapping"]
    if "*" in schema:
        found = []
        for k, v in value.items():
            key_problem = _leaf(schema["*key"], k, f"{path}.{k}") if "*key" in schema else None
            found += ([key_problem] if key_problem else []) + validate(v, schema["*"], f"{path}.{k}", unsupported)
        return found
    problems = []
    for key, item in value.items():
        where = f"{path}.{key}"
        if key in schema:
            problems += validate(item, schema[key], where, unsupported)
            continue
        why = (unsupported or {}).get(key)
        if why:
            problems.append(f"{where} is not supported by meshctl: {why}")
        else:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (supported: {', '.join(sorted(schema))})"
            problems.append(f"{where} is not a known field{hint}")
    return problems

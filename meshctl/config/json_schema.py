"""JSON Schema for each resource kind, generated from the validation schema itself (`meshctl schema KIND`).

Editors (VS Code's YAML extension, IntelliJ) read it to complete and check users' YAML as they type. It is
made from `kinds.py`'s field tables and `schema.py`'s leaf types, so it cannot drift from what `apply`
checks: every field `apply` knows is here, and one it does not know is refused here too. What only code can
check (weights adding up to 100, a subset defined in a DestinationRule, a regex RE2 can run, required fields
that depend on others) is left to `meshctl apply` and `meshctl analyze`.
"""

from __future__ import annotations

from typing import Any

from meshctl.config.kinds import Kind
from meshctl.config.resources import METADATA, NAMESPACE_RE
from meshctl.config.schema import HEADER_NAME_RE, HEADER_VALUE_BAD, NAME_RE, Schema
from sidecar.contract import DURATION_RE
from sidecar.grpc import STATUS_CODES
from sidecar.policy import RETRY_CONDITIONS, STATUS_RE

DIALECT = "https://json-schema.org/draft/2020-12/schema"
STRING = {"type": "string"}


def _anchored(pattern: str) -> str:
    """A Python pattern as JSON Schema reads it: ECMA-262, matched anywhere unless anchored."""
    core = pattern.removeprefix("^").removesuffix("$")
    return f"^{core}$"


def _retry_on() -> dict[str, Any]:
    token = "|".join(sorted(RETRY_CONDITIONS, key=len, reverse=True))  # [a-z0-9-]: nothing to escape
    item = f"\\s*(?:{token}|{STATUS_RE.pattern})?\\s*"  # empty items are skipped, as the validator does
    return {"type": "string", "pattern": f"^{item}(?:,{item})*$",
            "description": "comma-separated retry conditions or HTTP status codes, e.g. 5xx,connect-failure"}


def _leaves() -> dict[str, dict[str, Any]]:
    """Each leaf type of schema.py as JSON Schema: the same sets of values, where JSON Schema can say it."""
    def integer(low: int, high: int | None = None) -> dict[str, Any]:
        return {"type": "integer", "minimum": low, **({"maximum": high} if high is not None else {})}

    bad_header_chars = HEADER_VALUE_BAD.pattern.removeprefix("[").removesuffix("]")
    return {
        "string": STRING,
        "header": {"type": "string", "pattern": _anchored(HEADER_NAME_RE.pattern)},
        "header-value": {"type": "string", "pattern": f"^[^{bad_header_chars}]*$"},
        "name": {"type": "string", "pattern": _anchored(NAME_RE.pattern)},
        "int": integer(0),
        "port": integer(1, 65535),
        "status": integer(200, 599),
        "grpc-status": {"anyOf": [{"enum": sorted(STATUS_CODES)}, integer(0, 16),
                                  {"type": "string", "pattern": "^\\s*(?:[0-9]|1[0-6])\\s*$"}]},
        "retry-on": _retry_on(),
        "bool": {"type": "boolean"},
        "percent": {"type": "number", "minimum": 0, "maximum": 100},
        "duration": {"type": "string", "pattern": f"^\\s*{DURATION_RE.pattern.removeprefix('^').removesuffix('$')}"
                                                  "\\s*$", "description": "a duration such as 250ms, 1.5s, 2m or 1h"},
        "regex": {"type": "string", "description": "an RE2 regular expression"},
        "cidr": {"type": "string", "description": "an IP address or CIDR block, e.g. 10.0.0.0/8"},
        "url": {"type": "string", "pattern": "^https?://.+$"},
    }


LEAVES = _leaves()


def convert(schema: Schema | list[Any] | str) -> dict[str, Any]:
    """The JSON Schema of one node of a kinds.py schema: a leaf name, [item], {"*": value} or {field: ...}."""
    if isinstance(schema, str):
        if schema.startswith("enum:"):
            return {"enum": schema[5:].split("|")}
        return dict(LEAVES[schema])
    if isinstance(schema, list):
        return {"type": "array", "items": convert(schema[0])}
    if "*" in schema:
        out: dict[str, Any] = {"type": "object", "additionalProperties": convert(schema["*"])}
        if "*key" in schema:
            out["propertyNames"] = convert(schema["*key"])
        return out
    return {"type": "object", "properties": {k: convert(v) for k, v in schema.items()}, "additionalProperties": False}


def document(kind: Kind) -> dict[str, Any]:
    """The whole resource, as `meshctl apply` reads it: apiVersion, kind, metadata and spec, nothing else."""
    metadata = convert(METADATA)
    metadata["properties"] = {"name": convert("name"), **metadata["properties"],
                              "namespace": {"type": "string", "pattern": f"^(?:{NAMESPACE_RE.pattern[1:-1]})?$",
                                            "description": "the compose project"}}
    metadata["required"] = ["name"]
    return {
        "$schema": DIALECT,
        "title": f"{kind.name} ({kind.group}) as meshctl accepts it",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": list(kind.api_versions)},
            "kind": {"const": kind.name},
            "metadata": metadata,
            "spec": convert(kind.spec),
        },
        "additionalProperties": False,
    }

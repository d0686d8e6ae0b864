"""`apply -p PROJECT` of YAML written for Kubernetes' `default` namespace (Istio's docs and samples).

Istio's tasks put bookinfo in `default`: their policies say `namespace: default`, principals
`cluster.local/ns/default/sa/bookinfo-productpage` and serviceAccounts `default/bookinfo-productpage`. On compose
the namespace is the project, so with -n PROJECT each of these places that names `default` names PROJECT instead,
and the YAML applies unchanged. Only `default` is mapped: any other namespace is the user's own choice.
"""

from __future__ import annotations

import copy
import re
from typing import Any

DEFAULT = "default"
# The namespace segment of a principal, wherever more follows: `ns/default/sa/X` and the namespace-wide
# `ns/default/*` alike (left as written, the latter would name a project called `default`, not this one)
PRINCIPAL_NS = re.compile(r"(^|/)ns/default(?=/)")


def _principal(value: Any, project: str) -> Any:
    return PRINCIPAL_NS.sub(lambda m: f"{m.group(1)}ns/{project}", value) if isinstance(value, str) else value


def _account(value: Any, project: str) -> Any:
    return f"{project}/{value[len(DEFAULT) + 1:]}" if isinstance(value, str) and value.startswith("default/") \
        else value


def _namespace(value: Any, project: str) -> Any:
    return project if value == DEFAULT else value


SOURCE_FIELDS = {"principals": _principal, "notPrincipals": _principal, "serviceAccounts": _account,
                 "notServiceAccounts": _account, "namespaces": _namespace, "notNamespaces": _namespace}
WHEN_FIELDS = {"source.principal": _principal, "source.namespace": _namespace}


def map_default(resource: dict[str, Any], project: str) -> dict[str, Any]:
    """The resource with namespace `default` read as `project`, in its metadata and in its policies' sources."""
    out = copy.deepcopy(resource)
    out["metadata"]["namespace"] = project
    if out.get("kind") != "AuthorizationPolicy":
        return out
    for rule in out["spec"].get("rules") or []:
        for entry in rule.get("from") or []:
            src = entry.get("source") or {}
            for key, mapper in SOURCE_FIELDS.items():
                if key in src:
                    src[key] = [mapper(v, project) for v in src[key]]
        for cond in rule.get("when") or []:
            when = WHEN_FIELDS.get(cond.get("key"))
            for key in ("values", "notValues"):
                if when is not None and key in cond:
                    cond[key] = [when(v, project) for v in cond[key]]
    return out

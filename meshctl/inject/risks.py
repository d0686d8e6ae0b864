"""App containers that can undo their pod's traffic capture.

The app shares the sidecar's network namespace. With NET_ADMIN (or NET_RAW, or everything through
`privileged` / `cap_add: [ALL]`) it can rewrite or bypass the iptables rules that send its traffic
through the sidecar, so mTLS and policy would no longer hold for that pod. Istio has the same limit.
Inject still meshes such a service, and says so.
"""

from __future__ import annotations

from typing import Any

CAPTURE_CAPS = ("NET_ADMIN", "NET_RAW")


def _cap(value: Any) -> str:
    name = str(value).strip().upper()
    return name.removeprefix("CAP_")


def capture_risk(name: str, service: dict[str, Any]) -> str | None:
    """One line naming the service when its app could undo capture, else None."""
    privileged = service.get("privileged")
    if privileged is True or str(privileged).strip().lower() == "true":
        granted = "privileged: true"
    else:
        caps = service.get("cap_add")
        added = {_cap(c) for c in caps} if isinstance(caps, list) else set()
        found = [c for c in CAPTURE_CAPS if c in added or "ALL" in added]
        if not found:
            return None
        granted = f"cap_add {', '.join(found)}"
    return (f"service {name!r} has {granted}: its app can rewrite or bypass the pod's capture rules, so mTLS and "
            "policy cannot be enforced for it (the same limit as Istio); drop it unless the app needs it")

"""The keys compose v2 accepts, so a misspelt one is refused with a "did you mean" instead of carried along.

The lists are the compose specification's (compose-spec/compose-go, schema/compose-spec.json: the top-level
`properties` and `$defs.service.properties`); `x-` extension keys are always allowed, as there.
"""

from __future__ import annotations

import difflib
from typing import Any

TOP_LEVEL_KEYS = frozenset({"version", "name", "include", "services", "models", "networks", "volumes", "secrets",
                            "configs"})

SERVICE_KEYS = frozenset({
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command",
    "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period",
    "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop",
    "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging", "mac_address",
    "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models", "network_mode", "networks",
    "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_start",
    "pre_stop", "privileged", "profiles", "provider", "pull_policy", "pull_refresh_after", "read_only", "restart",
    "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
})


def _unknown(key: Any, known: frozenset[str], where: str) -> str | None:
    if isinstance(key, str) and (key in known or key.startswith("x-")):
        return None
    close = difflib.get_close_matches(str(key).lower(), sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else " (extension keys start with 'x-')"
    return f"{where}unknown key {str(key)!r}{hint}"


def unknown_keys(data: dict[Any, Any]) -> list[str]:
    """One problem per key compose would refuse, at the top level and in each service."""
    problems = [p for key in data if (p := _unknown(key, TOP_LEVEL_KEYS, ""))]
    services = data.get("services")
    for name, service in (services.items() if isinstance(services, dict) else ()):
        if isinstance(service, dict):
            problems += [p for key in service if (p := _unknown(key, SERVICE_KEYS, f"services.{name}: "))]
    return problems

"""The prometheus addon's configuration: prometheus.yml and the server's command line, pure functions of the
mesh's settings (no engine, no files), so the container's hash and the tests see exactly what it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from meshctl import const
from meshctl.extras.prometheus import NAME
from meshctl.home import MeshHome, MeshSettings

CONTAINER_PORT = 9090
JOB_SIDECARS = "sidecars"  # the scrape job of every sidecar; `up{job="sidecars"}` is one series per sidecar
JOB_SELF = "prometheus"
SCRAPE_INTERVAL = "5s"
DISCOVERY_REFRESH = "5s"
RETENTION = "7d"
CONFIG_FILE = "prometheus.yml"
CONFIG_IN_CONTAINER = "/etc/prometheus"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"

# docker_sd_configs names a container label io.meshctl.project as __meta_docker_container_label_io_meshctl_project.
_META = "__meta_docker_container_label_"
TARGET_LABELS = {  # target label <- sidecar container label
    "project": f"{const.LABEL_PREFIX}.project",
    "service": f"{const.LABEL_PREFIX}.service",
    "app": f"{const.LABEL_PREFIX}.app",
    "version": f"{const.LABEL_PREFIX}.subset",
}


def _meta(label: str) -> str:
    return _META + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _docker_job(settings: MeshSettings) -> dict[str, Any]:
    """One host: every sidecar container from the engine's socket, with its labels as target labels."""
    relabel: list[dict[str, Any]] = [
        # one discovered target per network and exposed port of each sidecar: keep the mesh network's :15090
        {"source_labels": ["__meta_docker_network_name"], "regex": re.escape(settings.network), "action": "keep"},
        {"source_labels": ["__meta_docker_port_private"], "regex": f"{const.PORT_METRICS}|", "action": "keep"},
        {"source_labels": ["__meta_docker_network_ip"], "regex": "(.+)", "target_label": "__address__",
         "replacement": f"${{1}}:{const.PORT_METRICS}"},
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "container",
         "replacement": "${1}"},
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "instance",
         "replacement": "${1}"},
    ]
    relabel += [{"source_labels": [_meta(label)], "regex": "(.+)", "target_label": target, "replacement": "${1}"}
                for target, label in TARGET_LABELS.items()]
    return {
        "job_name": JOB_SIDECARS,
        "metrics_path": "/stats/prometheus",
        "docker_sd_configs": [{
            "host": f"unix://{SOCKET_IN_CONTAINER}",
            "refresh_interval": DISCOVERY_REFRESH,
            "port": const.PORT_METRICS,  # for a sidecar whose image exposes no port
            "filters": [{"name": "label", "values": [f"{const.LABEL_COMPONENT}=sidecar"]}],
        }],
        "relabel_configs": relabel,
    }


def _dns_job() -> dict[str, Any]:
    """Several hosts: the engine's socket only knows the manager's containers, but the overlay's DNS answers the
    sidecars' shared alias with every one's address, on every host. Targets are addresses: the container's
    labels (project, service, app, version, container) are not known here; the metrics' own labels
    (destination_workload, destination_service_namespace, ...) say the same, and Istio's dashboards use those."""
    return {
        "job_name": JOB_SIDECARS,
        "metrics_path": "/stats/prometheus",
        "dns_sd_configs": [{"names": [const.SIDECARS_ALIAS], "type": "A", "port": const.PORT_METRICS,
                            "refresh_interval": DISCOVERY_REFRESH}],
    }


def config(settings: MeshSettings) -> dict[str, Any]:
    """prometheus.yml: sidecars discovered from Docker (one host) or the overlay's DNS (a cluster), scraped at
    their address on the mesh network."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "4s", "evaluation_interval": "5s"},
        "scrape_configs": [
            _dns_job() if settings.cluster else _docker_job(settings),
            {"job_name": JOB_SELF, "static_configs": [{"targets": [f"localhost:{CONTAINER_PORT}"]}]},
        ],
    }


def render_config(settings: MeshSettings) -> str:
    # one host's text is as it was: a changed file would recreate a running Prometheus on the next install
    found = (f"Sidecars are discovered by the DNS name {const.SIDECARS_ALIAS} on the mesh network" if settings.cluster
             else f"Sidecars (label {const.LABEL_COMPONENT}=sidecar) are discovered from Docker")
    header = ("# Written by `meshctl install --addons prometheus`; edits are replaced on the next install.\n"
              f"# {found} every {DISCOVERY_REFRESH}.\n")
    return header + yaml.safe_dump(config(settings), sort_keys=False)


def command() -> list[str]:
    return [f"--config.file={CONFIG_IN_CONTAINER}/{CONFIG_FILE}", "--storage.tsdb.path=/prometheus",
            f"--storage.tsdb.retention.time={RETENTION}", f"--web.listen-address=0.0.0.0:{CONTAINER_PORT}"]


def config_dir(home: MeshHome) -> Path:
    """Where the mesh home keeps prometheus.yml; the container mounts it read-only."""
    return home.addons_dir / NAME

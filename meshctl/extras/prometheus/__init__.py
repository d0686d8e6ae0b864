"""The prometheus addon: a real Prometheus server scraping every sidecar.

    meshctl install --addons prometheus
        builds meshctl/prometheus:<version> from Debian's `prometheus` package (fetched by the host's apt,
        since containers cannot reach the mirror) on the base image, and runs `meshctl-prometheus` on the
        mesh network, its web UI and API published on 127.0.0.1 only (port 9090 unless told otherwise).

Targets come from Docker itself (docker_sd_configs over the engine's socket, refreshed every 5s): every
running container labelled as a sidecar, at its address on the mesh network, port 15090, path
/stats/prometheus, with its project, service, app, version and container as target labels. Prometheus
follows containers as they come and go; meshctl never rewrites the config for that. In a mesh that spans
hosts the engine's socket only knows the manager's containers: targets come from the overlay's DNS instead
(every sidecar's alias const.SIDECARS_ALIAS, type A, port 15090), without those target labels.

One module per concern; import the one you need:
    config      prometheus.yml and the server's command line (pure)
    image       the image build from Debian's packages
    container   run, replace and remove the container; wait until it is ready
    client      find the running server (`url(home)`) and ask it (`query(base, promql)`, `targets(base)`)

This module holds only the names every part shares, so importing it costs nothing.
"""

from __future__ import annotations

from meshctl import const

NAME = "prometheus"  # as `--addons` and mesh.yaml's `addons` spell it
COMPONENT = "addon-prometheus"  # the io.meshctl.component label of its image and container
CONTAINER = const.PROMETHEUS_CONTAINER
IMAGE = const.PROMETHEUS_IMAGE

"""Names shared by the control plane, the injector and the data plane.

Docker holds meshctl's state through these labels (docker-compose's habit), and the port numbers are
Istio's, so tools and habits carry over.
"""

from typing import Final

from meshctl import __version__

# Istio's data-plane numbers: defined once by the sidecar's contract (the sidecar cannot import meshctl).
from sidecar.contract import PORT_ADMIN as PORT_ADMIN
from sidecar.contract import PORT_HEALTH as PORT_HEALTH
from sidecar.contract import PORT_INBOUND as PORT_INBOUND
from sidecar.contract import PORT_METRICS as PORT_METRICS
from sidecar.contract import PORT_OUTBOUND as PORT_OUTBOUND
from sidecar.contract import PROXY_PORTS as PROXY_PORTS
from sidecar.contract import PROXY_UID as PROXY_UID

LABEL_PREFIX: Final = "io.meshctl"
LABEL_MANAGED: Final = f"{LABEL_PREFIX}.managed"  # "true" on everything meshctl creates
LABEL_COMPONENT: Final = f"{LABEL_PREFIX}.component"  # network | base-image | proxy-image | sidecar | sample | addon-*
LABEL_VERSION: Final = f"{LABEL_PREFIX}.version"  # meshctl version that built an image
LABEL_BUILD_HASH: Final = f"{LABEL_PREFIX}.build-hash"  # content hash: same hash, no rebuild
LABEL_CONFIG_HASH: Final = f"{LABEL_PREFIX}.config-hash"  # on containers meshctl runs: same hash, no recreate
LABEL_HOME: Final = f"{LABEL_PREFIX}.home"  # the mesh home whose install runs an addon's container

NETWORK_NAME: Final = "meshctl"
# Every sidecar's alias on the mesh network: in a cluster Prometheus finds them all (on every host) by this name's A
# records, since its docker_sd_configs would only see the manager's engine.
SIDECARS_ALIAS: Final = "meshctl-sidecars"
DEFAULT_TRUST_DOMAIN: Final = "cluster.local"

BASE_IMAGE: Final = "meshctl/base:bookworm"
PROXY_IMAGE_REPO: Final = "meshctl/proxy"
PROXY_IMAGE: Final = f"{PROXY_IMAGE_REPO}:{__version__}"

# Optional components `meshctl install --addons` runs beside the mesh.
ADDONS: Final = ("prometheus",)
PROMETHEUS_IMAGE_REPO: Final = "meshctl/prometheus"
PROMETHEUS_IMAGE: Final = f"{PROMETHEUS_IMAGE_REPO}:{__version__}"
PROMETHEUS_CONTAINER: Final = "meshctl-prometheus"
PROMETHEUS_PORT: Final = 9090  # published on 127.0.0.1 only

# Packages in the offline-built base image: enough for the sidecar (python3, iptables, and nftables for `nft`,
# which its capture self-check reads) and samples (curl).
BASE_PACKAGES: Final = ("python3", "python3-venv", "ca-certificates", "iptables", "nftables", "curl")
DEBIAN_SUITE: Final = "bookworm"
DEBIAN_MIRROR: Final = "http://deb.debian.org/debian"

# What the sidecar image installs from the host-built wheelhouse. The proxy runs on uvloop and httptools, and
# HTTP/2 on h2 (the state machine under mitmproxy's HTTP/2). mitmproxy itself is on the host only: `meshctl tap`
# writes its flow files there; no sidecar imports it any more.
PROXY_PYTHON_PACKAGES: Final = ("h2>=4.1,<5", "prometheus_client>=0.20", "pyyaml>=6", "uvloop>=0.21",
                                 "google-re2>=1.1", "pyjwt[crypto]>=2.9", "httptools>=0.6")

# Each generated sidecar's compose `mem_limit`: a sidecar under attack is OOM-killed (and restarted) instead of
# taking the host down. It idles near 64 MB and must stay under 100 MB under attack (issue 14), so 256m is
# headroom for real load (HTTP/2, `tap`), not a budget.
PROXY_MEM_LIMIT: Final = "256m"

CA_VALIDITY_DAYS: Final = 3650
CA_WARN_DAYS: Final = 90  # `check` warns when the root expires sooner than this

"""Write the files one sidecar may read, in <home>/proxies/<project>/<service>/ (meshctl.mesh), mounted at /etc/meshctl.

Only this directory is mounted into the sidecar, so each sidecar reads only its own key; the CA key is
never among them. Files belong to the proxy uid (1337) when meshctl runs as root, so the proxy, which
never runs as root, can read its 0600 key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshctl.fsutil import atomic_write, ensure_dir, own_by_proxy
from meshctl.mesh import BUNDLE_PEM, CERT_PEM, KEY_PEM, PROXY_JSON, SNAPSHOT_JSON
from meshctl.pki.workload import WorkloadCert


def write_proxy_files(directory: Path, cert: WorkloadCert, bundle: bytes, info: dict[str, Any],
                      snapshot: dict[str, Any]) -> None:
    ensure_dir(directory.parent, 0o700)
    ensure_dir(directory, 0o700)
    own_by_proxy(directory)
    files = [(KEY_PEM, cert.key_pem(), 0o600), (CERT_PEM, cert.cert_pem(), 0o644), (BUNDLE_PEM, bundle, 0o644),
             (PROXY_JSON, json.dumps(info, indent=1).encode(), 0o644),
             (SNAPSHOT_JSON, json.dumps(snapshot, indent=1).encode(), 0o644)]
    for name, data, mode in files:
        atomic_write(directory / name, data, mode=mode)
        own_by_proxy(directory / name)

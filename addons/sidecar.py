"""The sidecar container's entrypoint (PID 1, root): capture rules, then supervise the proxy.

It installs the iptables rules in the pod's namespace, then runs the proxy as the proxy uid (the owner of
the workload key, 1337 by default) and restarts it within a fraction of a second if it dies. The
container itself stays up, so the network namespace the app shares with it is never torn down.
SIGTERM is passed on, and the proxy drains in-flight connections before it exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from addons import capture, snapshot
from addons.mtls import CERT_DIR

DEFAULT_UID = 1337
RESTART_DELAY_S = 0.2


def proxy_uid(cert_dir: Path) -> int:
    """Run the proxy as the owner of its key: 1337 when meshctl runs as root, the user's uid otherwise."""
    try:
        owner = (cert_dir / "key.pem").stat().st_uid
    except OSError:
        return DEFAULT_UID
    return owner or DEFAULT_UID


def say(message: str) -> None:
    sys.stderr.write(f"meshctl-sidecar: {message}\n")
    sys.stderr.flush()


def main() -> int:
    try:
        snap = snapshot.load(CERT_DIR / "snapshot.json")
    except snapshot.SnapshotError as exc:
        say(f"cannot start: {exc}")
        return 1
    uid = proxy_uid(CERT_DIR)
    try:
        capture.install(uid, snap.exclude_inbound_ports, snap.exclude_outbound_ports)
    except subprocess.CalledProcessError as exc:
        say(f"cannot install capture rules (does the container have NET_ADMIN?): {exc.stderr.decode().strip()}")
        return 1
    say(f"capture rules installed for {snap.name}; proxy runs as uid {uid}")

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = {**os.environ, "HOME": "/tmp"}
    while not stopping:
        child = subprocess.Popen([sys.executable, "-m", "addons.proxy"], user=uid, group=uid, env=env,
                                 cwd="/tmp")
        code = child.wait()
        if stopping:
            return 0
        say(f"proxy exited with {code}; restarting")
        time.sleep(RESTART_DELAY_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())

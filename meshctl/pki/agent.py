"""The certificate agent: a small background process on the host that renews workload certificates.

Istio's istiod renews certificates continuously; meshctl has no server, so `install`, `inject` and
`demo` make sure one agent per mesh home runs (`meshctl certs agent`, detached). It holds
<home>/citadel.lock for its life, so a second one exits at once, and it exits by itself when the home
is removed. The CA key stays on the host: the agent writes each renewed certificate into the proxy's
directory, and the sidecar picks it up within a second, with no restart. Across hosts it also re-sends
each pod's files that a node missed while it was down (runtime.delivery), and starts a deployed project's
pods again on a node that came back (runtime.deployments: Docker does not, there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshctl.errors import MeshError
from meshctl.home import MeshHome
from meshctl.pki import citadel
from meshctl.runtime import delivery, deployments

log = logging.getLogger("meshctl.agent")
LOCK = "citadel.lock"
PID = "citadel.pid"
STARTUP_S = 10.0


def tick_seconds(home: MeshHome, now: dt.datetime) -> float:
    """Until the next certificate is due, and at most a few seconds: certificates issued meanwhile (a new
    --cert-ttl, a rotation, an inject) are then seen well before half their life."""
    ttl = citadel.cert_ttl(home).total_seconds()
    due = [citadel.renewal_time(i) for i in citadel.workload_certs(home)]
    until_due = (min(due) - now).total_seconds() if due else ttl
    return max(0.5, min(5.0, ttl / 20, until_due))


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def running(home: MeshHome) -> bool:
    if not home.root.is_dir():
        return False
    fd = _try_lock(home.root / LOCK)
    if fd is None:
        return True
    os.close(fd)  # closing releases the lock: nobody held it
    return False


def ensure_running(home: MeshHome) -> bool:
    """Start the agent for this home unless one runs; returns True if it started one.

    MESHCTL_AGENT=off starts none (unit tests, or a host that runs `meshctl certs agent` under a supervisor).
    """
    if os.environ.get("MESHCTL_AGENT", "").lower() == "off" or running(home):
        return False
    log_file = open(home.root / "citadel.log", "ab")  # noqa: SIM115 - handed to the child for its life
    with log_file:
        child = subprocess.Popen([sys.executable, "-m", "meshctl", "--home", str(home.root), "certs", "agent"],
                                 stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                                 close_fds=True)
    # Return once it holds its lock and wrote its pid: whoever asked may rely on it from then on.
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and child.poll() is None:
        if running(home) and _pid_file(home) == child.pid:
            return True
        time.sleep(0.05)
    log.warning("the certificate agent did not start within %gs; see %s", STARTUP_S, home.root / "citadel.log")
    return False


def _pid_file(home: MeshHome) -> int | None:
    try:
        return int((home.root / PID).read_text())
    except (OSError, ValueError):
        return None


def stop(home: MeshHome) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((home.root / PID).read_text()), signal.SIGTERM)


def run(home: MeshHome) -> int:
    """The agent's loop; returns when the home is gone or another agent holds the lock."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fd = _try_lock(home.root / LOCK)
    if fd is None:
        log.info("another agent runs for %s", home.root)
        return 0
    (home.root / PID).write_text(str(os.getpid()))
    log.info("certificate agent for %s started (pid %d)", home.root, os.getpid())
    try:
        while home.is_installed():
            try:
                now = dt.datetime.now(dt.UTC)
                renewed = citadel.renew_due(home, now)
                if renewed:
                    log.info("renewed %d certificate(s): %s", len(renewed), ", ".join(renewed))
                # across hosts: whatever a node missed while it was down (no-op on one host)
                resent = delivery.deliver(home)
                if resent.delivered:
                    log.info("delivered the files of %s", ", ".join(resent.delivered))
                for revived in deployments.revive(home):  # a node that came back: its pods start again
                    log.info("started again: %s", revived)
                time.sleep(tick_seconds(home, dt.datetime.now(dt.UTC)))
            except MeshError as exc:  # e.g. a proxy directory removed mid-scan: the next round sees the truth
                log.warning("renewal round failed: %s", exc.one_line())
                time.sleep(2)
            except Exception:  # never die: an agent that stops renewing is a certificate outage later
                log.exception("renewal round failed")
                time.sleep(2)
        log.info("the mesh home is gone; the agent stops")
        return 0
    finally:
        os.close(fd)

"""The sidecar container's entrypoint (PID 1, root): capture rules, then supervise the proxy.

It installs the iptables rules in the pod's namespace and runs the proxy as uid 1337 (exempt from
capture, with no supplementary groups), restarting it within a fraction of a second if it dies. The
container itself stays up, so the network namespace the app shares with it is never torn down.

While the proxy runs, this loop also:
- re-applies the capture rules when a new snapshot changes the excluded ports;
- re-reads them every CAPTURE_CHECK_S (iptables-save, nft's ruleset and the legacy backend) and puts
  them back when another container with NET_ADMIN changed them, logging what changed; until a check
  finds them intact again, a marker file makes the proxy report not ready (the proxy runs as 1337 and
  cannot read the rules itself);
- when the mounted files are not owned by 1337 (meshctl run by a non-root user), keeps a 1337-owned
  copy in /run/meshctl, so the proxy can read its key without running as the user's uid (which the app
  may share, and which would then bypass capture);
- when the files were delivered into a volume (a mesh across hosts: a manifest.json comes with them),
  keeps the same copy, updated only with a whole set whose every file matches the manifest: the engine
  writes a delivered file in place, so the proxy must never read the set half-way.
SIGTERM is passed on, and the proxy drains in-flight connections before it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sidecar import capture, snapshot
from sidecar.contract import DELIVERY_FILES, MANIFEST_JSON, PROXY_UID

CERT_DIR = snapshot.PROXY_DIR  # only the stdlib is imported here: this process stays small

MIRROR_DIR = Path("/run/meshctl")
FILES = DELIVERY_FILES
TICK_S = 0.1
RESTART_DELAY_S = 0.2
# How often the nat rules are re-read: a changed rule lets traffic past the proxy for at most this long
# (plus one restore); reading the three views every 2 s costs a few ms of CPU.
CAPTURE_CHECK_S = 2.0
MAX_LOGGED_PROBLEMS = 5


def say(message: str) -> None:
    sys.stderr.write(f"meshctl-sidecar: {message}\n")
    sys.stderr.flush()


def delivered(cert_dir: Path) -> bool:
    return (cert_dir / MANIFEST_JSON).is_file()


def needs_mirror(cert_dir: Path) -> bool:
    if delivered(cert_dir):
        return True
    try:
        return (cert_dir / "key.pem").stat().st_uid != PROXY_UID
    except OSError:
        return False


def read_plain(path: Path) -> bytes:
    """A regular file's bytes, never through a symlink (this process is root: a link planted in the mounted
    directory must not make it copy another file where the proxy reads), nor a FIFO (PID 1 would block on it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read()
    finally:
        os.close(fd)


def verified_set(source: Path) -> dict[str, bytes] | None:
    """The delivered files, if each one is the manifest's; None while a delivery is half-written."""
    try:
        listed = json.loads(read_plain(source / MANIFEST_JSON))["files"]
        contents = {name: read_plain(source / name) for name in listed if name in FILES}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if set(contents) != set(listed) or any(hashlib.sha256(data).hexdigest() != listed[name]
                                           for name, data in contents.items()):
        return None
    return contents


def _put(target: Path, name: str, data: bytes) -> None:
    """Write `name` atomically, owned by the proxy. The directory is the proxy's own, so the proxy could plant
    a symlink at the temporary name: root creates it afresh (O_EXCL, O_NOFOLLOW) and changes the file it
    opened, never a path a link points to."""
    tmp = target / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, PROXY_UID, PROXY_UID)
        os.fchmod(fd, 0o600 if name == "key.pem" else 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, target / name)  # a rename replaces a link at `name` itself, never what it points to


def mirror_delivered(source: Path, target: Path, seen: dict[str, float]) -> None:
    """Copy a delivered set once the manifest vouches for all of it: key first, then the certificate (the
    proxy keeps the pair in force while they mismatch), the bundle, and the snapshot last."""
    try:
        stamp = (source / MANIFEST_JSON).stat().st_mtime_ns
    except OSError:
        return
    if seen.get(MANIFEST_JSON) == stamp:
        return
    contents = verified_set(source)
    if contents is None:
        return  # the rest of the delivery is still being written: look again at the next tick
    for name in ("key.pem", "cert.pem", "bundle.pem", "snapshot.json"):
        if name in contents and _read(target / name) != contents[name]:
            _put(target, name, contents[name])
    seen[MANIFEST_JSON] = stamp


def _read(path: Path) -> bytes | None:
    try:
        return read_plain(path)
    except OSError:
        return None


def mirror(source: Path, target: Path, seen: dict[str, float]) -> None:
    """Copy changed files, each atomically, owned by the proxy uid (the key stays 0600)."""
    if delivered(source):
        mirror_delivered(source, target, seen)
        return
    for name in FILES:
        try:
            mtime = (source / name).stat().st_mtime_ns
        except OSError:
            continue
        if seen.get(name) == mtime:
            continue
        try:
            data = read_plain(source / name)
        except OSError as exc:
            say(f"not copying {name}: {exc}")
            seen[name] = mtime  # said once, until the file changes
            continue
        _put(target, name, data)
        seen[name] = mtime


def capture_ports(snap: snapshot.Snapshot) -> tuple[frozenset[int], frozenset[int]]:
    return snap.exclude_inbound_ports, snap.exclude_outbound_ports


class CaptureGuard:
    """Keeps the live capture rules equal to ours, and tells the proxy (through `marker`) while they are not."""

    def __init__(self, marker: Path = capture.BROKEN_MARKER, run: capture.Runner = subprocess.run,
                 log: Callable[[str], None] = say) -> None:
        self.marker = marker
        self.run = run
        self.log = log
        self.ports: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self.broken = False
        self.last: tuple[list[str], str] = ([], "")
        self.docker_dns: list[str] = []  # Docker's DNS rules, put back if the nat table has to be rebuilt
        self.announced = False

    def install(self, ports: tuple[frozenset[int], frozenset[int]]) -> None:
        """Install (at start, or for new excluded ports); raises CalledProcessError when iptables refuses."""
        self._remember(capture.install(PROXY_UID, *ports, run=self.run, keep=self.docker_dns))
        self.ports = ports

    def check(self) -> bool:
        """True when the rules are intact. Otherwise mark not ready, log what changed, and restore them: the
        marker stays until the next check finds them intact, so a flapping attacker keeps the pod unready."""
        try:
            live = capture.dump(self.run)
            problems = capture.check(live, capture.rules(PROXY_UID, *self.ports))
        except (OSError, subprocess.CalledProcessError) as exc:  # fail closed: unreadable is not intact
            problems = [f"cannot read the capture rules: {capture.why(exc)}"]
        if not problems:
            self._remember(live)
            if self.broken:
                self.broken = False
                self.marker.unlink(missing_ok=True)
                self.log("capture rules verified intact again; reporting ready")
            return True
        try:
            self._mark()
        except OSError as exc:  # still restore below; PID 1 must not die (the pod's namespace would go with it)
            self.log(f"cannot mark the proxy not ready: {exc}")
        try:
            capture.install(PROXY_UID, *self.ports, run=self.run, keep=self.docker_dns)
            outcome = "restored them; not ready until the next check finds them intact"
        except (OSError, subprocess.CalledProcessError) as exc:
            outcome = f"cannot restore them: {capture.why(exc)}"
        if not self.broken or (problems, outcome) != self.last:  # one line per change, not one per check
            shown = problems[:MAX_LOGGED_PROBLEMS]
            more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
            self.log(f"capture rules were changed ({'; '.join(shown)}{more}); {outcome}")
        self.broken, self.last = True, (problems, outcome)
        return False

    def clear(self) -> None:
        """A fresh start: rules just installed, so no marker left from a previous run of this container."""
        self.broken = False
        self.marker.unlink(missing_ok=True)

    def _remember(self, live: capture.Live) -> None:
        if not self.announced:  # once: which views are read (a missing nft or iptables-legacy is not watched)
            self.log(capture.watched(live))
            self.announced = True
        self.docker_dns = capture.docker_dns(live.iptables) or self.docker_dns

    def _mark(self) -> None:
        # root-owned 0755 directory and 0644 file: the proxy (1337) can read them, not remove them
        self.marker.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.marker.with_name(f".{self.marker.name}.tmp")
        tmp.write_text("capture rules were changed; restoring\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.marker)


def first_delivery(source: Path, target: Path, seen: dict[str, float], wait_s: float) -> None:
    """The first verified set of a delivered directory; the restart policy retries if none comes in time."""
    target.mkdir(mode=0o700, exist_ok=True)
    os.chown(target, PROXY_UID, PROXY_UID)
    deadline = time.monotonic() + wait_s
    mirror(source, target, seen)
    while delivered(source) and MANIFEST_JSON not in seen and time.monotonic() < deadline:
        time.sleep(TICK_S)
        mirror(source, target, seen)


def main() -> int:
    env = {**os.environ, "HOME": "/tmp"}
    seen: dict[str, float] = {}
    source = CERT_DIR
    if needs_mirror(CERT_DIR):
        first_delivery(CERT_DIR, MIRROR_DIR, seen, wait_s=10.0)
        env["MESHCTL_PROXY_DIR"] = str(MIRROR_DIR)
        source = MIRROR_DIR  # what the proxy reads: the capture rules follow the same snapshot
    try:
        snap = snapshot.load(source / "snapshot.json")
    except snapshot.SnapshotError as exc:
        say(f"cannot start: {exc}")
        return 1
    ports = capture_ports(snap)
    guard = CaptureGuard()
    try:
        guard.install(ports)
    except (OSError, subprocess.CalledProcessError) as exc:
        say(f"cannot install capture rules (does the container have NET_ADMIN?): {capture.why(exc)}")
        return 1
    guard.clear()
    say(f"capture rules installed for {snap.name}; proxy runs as uid {PROXY_UID}")

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    snapshot_mtime = 0.0
    next_check = time.monotonic() + CAPTURE_CHECK_S
    while not stopping:
        child = subprocess.Popen([sys.executable, "-O", "-m", "sidecar.main"], user=PROXY_UID, group=PROXY_UID,
                                 extra_groups=[], env=env, cwd="/tmp")
        if stopping:  # SIGTERM arrived while the child was being started
            child.send_signal(signal.SIGTERM)
        while child.poll() is None:
            time.sleep(TICK_S)
            if "MESHCTL_PROXY_DIR" in env:
                try:
                    mirror(CERT_DIR, MIRROR_DIR, seen)
                except OSError as exc:  # PID 1 must not die (the pod's namespace would go with it): next tick
                    say(f"cannot copy the proxy's files: {exc}")
            try:
                mtime = (source / "snapshot.json").stat().st_mtime
                if mtime != snapshot_mtime:
                    snapshot_mtime = mtime
                    wanted = capture_ports(snapshot.load(source / "snapshot.json"))
                    if wanted != ports:
                        guard.install(wanted)
                        ports = wanted
                        say(f"capture rules updated: excluded inbound {sorted(ports[0])}, outbound {sorted(ports[1])}")
            except (OSError, snapshot.SnapshotError, subprocess.CalledProcessError):
                pass  # the proxy reports a bad snapshot as REJECTED; rules stay as they are
            if time.monotonic() >= next_check:
                guard.check()
                next_check = time.monotonic() + CAPTURE_CHECK_S
        if stopping:
            return 0
        say(f"proxy exited with {child.returncode}; restarting")
        time.sleep(RESTART_DELAY_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The store never loses a write: concurrent writers, writers killed mid-write, a full disk, a read-only home.

Writers killed mid-write are killed at every point of interest, not by luck: the child process pauses
inside the write (before each fchmod, fsync and rename the write makes) and the parent SIGKILLs it
there, then checks that what is on disk loads cleanly and is the old state or the new one. Mount-based
tests (tmpfs: a tiny one to fill, a read-only one) and the non-root user need root: they skip without it,
except on CI (CI=true), which runs them as root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import functools
import io
import json
import multiprocessing
import os
import random
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from meshctl.cli import run
from meshctl.config import routes
from meshctl.config.kinds import find_kind
from meshctl.config.resources import key, load
from meshctl.config.store import Resource, Revision, Store
from meshctl.context import Context
from meshctl.errors import InvalidInput, PermissionProblem, UsageError
from meshctl.fsutil import atomic_write, locked
from meshctl.home import MeshHome
from meshctl.mesh import MeshedPods, Pod, describe
from meshctl.pilot import changes
from meshctl.pki import ca, citadel, workload
from meshctl.status import ExitCode
from tests.unit.cli import Done, meshctl
from tests.unit.test_analyze import DR
from tests.unit.test_cli_errors import one_error_line
from tests.unit.test_inject import BOOKINFO

FORK = multiprocessing.get_context("fork")
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root (mount, another user); CI runs it as root")


# --- helpers ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here needs Docker; inject, install and certs must not find the host's engine either."""
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE["DOCKER_HOST"])


def make_home(root: Path) -> Path:
    """An installed mesh home (settings, CA, store at revision 0) by install's own local steps."""
    from meshctl.lifecycle import install

    ctx = Context(home=MeshHome(root))
    settings = install.resolve_settings(ctx, None, None, None)
    for step in (install.HomeStep(ctx, settings), install.CAStep(ctx, settings), install.StoreStep(ctx)):
        step.apply(lambda _: None)
    return root


def quiet_context(home: Path, out: io.StringIO | None = None, err: io.StringIO | None = None) -> Context:
    return Context(home=MeshHome(home), out=Console(file=out or io.StringIO(), width=400, soft_wrap=True),
                   err=Console(file=err or io.StringIO(), width=400, soft_wrap=True))


def cli(home: Path, *argv: str) -> Done:
    """The whole CLI (parsing, command, error handler) in this process: as a subprocess, without its start-up."""
    return meshctl(*argv, home=home)


def vs_doc(name: str, host: str, extra: str = "") -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\n"
            f"spec:\n  hosts: [{host}]\n  http:\n  - route: [{{destination: {{host: {host}}}}}]\n{extra}")


def resources_from(tmp: Path, text: str) -> list[Resource]:
    tmp.write_text(text)
    return load([str(tmp)])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its content: to show that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def whole_revisions(store: Store, uncommitted: bool = False) -> list[Revision]:
    """Every revision file parses and is the revision its name says; numbered 0..current without gaps (and
    with `uncommitted`, perhaps one more: a writer killed before it moved the pointer)."""
    current = store.current_number()
    files = sorted((store.root / "revisions").glob("*.json"))
    numbers = [int(f.stem) for f in files]
    assert numbers in ([*range(current + 1)], [*range(current + 2)] if uncommitted else []), numbers
    for f in files:
        assert json.loads(f.read_text())["revision"] == int(f.stem)
    return store.history()


# --- concurrent writers ----------------------------------------------------------------------------------

def upsert(current: list[Resource], new: list[Resource]) -> list[Resource]:
    out = [dict(r) for r in current]
    index = {key(r): i for i, r in enumerate(out)}
    for r in new:
        if key(r) in index:
            out[index[key(r)]] = r
        else:
            out.append(r)
    return out


def replay(op: dict[str, Any], before: list[Resource], history: list[Revision]) -> list[Resource]:
    """What `op` makes of `before`, computed independently of the store (raises if the op would fail)."""
    if op["kind"] == "apply":
        return upsert(before, op["resources"])
    if op["kind"] == "delete":
        kept = [r for r in before if key(r) != ("VirtualService", None, op["name"])]
        if len(kept) == len(before):
            raise InvalidInput("not found")
        return kept
    if op["kind"] == "rollback":
        return list(history[op["to"]].resources)
    assert op["kind"] == "route"
    return routes.set_route(before, op["service"], routes.RouteEdit(to=op["to"]), op["versions"])


def _mixed_worker(home: str, ops: list[dict[str, Any]], results: str) -> None:
    ctx = quiet_context(Path(home))
    done = []
    for op in ops:
        ctx.clock = functools.partial(float, op["tag"])  # each revision records the op that made it
        try:
            if op["kind"] == "apply":
                rev = changes.apply(ctx, op["resources"])[0]
            elif op["kind"] == "delete":
                kind = find_kind("VirtualService")
                assert kind is not None
                rev = changes.delete(ctx, kind, op["name"])[0]
            elif op["kind"] == "rollback":
                rev = changes.rollback(ctx, op["to"])[0]
            else:
                rev = changes.edit(ctx, functools.partial(replay, op, history=[]), f"route set {op['service']}")[0]
            done.append({"tag": op["tag"], "revision": rev.revision, "time": rev.time})
        except (InvalidInput, UsageError) as exc:  # a subset not defined; a name or revision that is gone
            done.append({"tag": op["tag"], "revision": None, "error": exc.message})
    Path(results).write_text(json.dumps(done))


def test_mixed_concurrent_writers_are_one_serial_order(installed_home: Path, tmp_path: Path) -> None:
    """apply, delete, rollback and route set from 4 processes at once: the revisions form one serial order in
    which every op that succeeded appears once, applied to the state before it (no lost update)."""
    workers, per_worker = 6, 15
    ops: dict[int, dict[str, Any]] = {}
    plan: list[list[dict[str, Any]]] = []
    for w in range(workers):
        mine = []
        for j in range(per_worker):
            tag = 1000 * (w + 1) + j
            kind = ("apply", "route", "apply", "delete", "rollback" if w == 0 else "apply")[j % 5]
            op: dict[str, Any] = {"tag": tag, "kind": kind}
            if kind == "apply":  # its own resource (deleted 3 ops later), or one of those everybody changes
                name = f"w{w}-{j}" if j % 5 == 0 else f"shared-{j % 3}"
                op["resources"] = resources_from(tmp_path / f"{tag}.yaml", vs_doc(name, f"h{tag}"))
            elif kind == "delete":
                op["name"] = f"w{w}-{j - 3}"
            elif kind == "rollback":
                op["to"] = 1 + j % 3
            else:
                weight = (tag * 7) % 101
                op.update(service=f"svc{w % 2}", to=[f"v1={weight}", f"v2={100 - weight}"], versions={"v1", "v2"})
            ops[tag] = op
            mine.append(op)
        plan.append(mine)
    procs = [FORK.Process(target=_mixed_worker, args=(str(installed_home), mine, str(tmp_path / f"r{w}.json")))
             for w, mine in enumerate(plan)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [r for w in range(workers) for r in json.loads((tmp_path / f"r{w}.json").read_text())]

    store = Store(installed_home / "config")
    history = whole_revisions(store)
    assert temp_files(store.root) == []
    tags = [int(rev.time) for rev in history[1:]]
    assert len(tags) == len(set(tags))  # no op landed twice
    for k, tag in enumerate(tags, start=1):  # each revision is its op applied to the one before: a serial order
        assert history[k].resources == replay(ops[tag], history[k - 1].resources, history), (k, ops[tag]["kind"])
    landed = {r["tag"] for r in results if r["revision"] is not None and r["time"] == r["tag"]}
    assert landed == set(tags)  # every write reported as made is there; nothing else is
    for r in results:
        if r["revision"] is not None and r["time"] != r["tag"]:  # a change that changed nothing wrote nothing
            state = history[r["revision"]].resources
            assert replay(ops[r["tag"]], state, history) == state
    assert {t for t, op in ops.items() if op["kind"] in ("apply", "route")} <= landed  # these always change it
    interleaved = [tags[k] // 1000 != tags[k - 1] // 1000 for k in range(1, len(tags))]
    assert sum(interleaved) >= workers  # the processes did write in turns, not one after the other


def _cli_child(home: str, argv: list[str], log: str) -> None:
    out = io.StringIO()
    code = run(argv, obj=quiet_context(Path(home), out, out))
    Path(log).write_text(out.getvalue())
    sys.exit(code)


def test_mixed_concurrent_cli_commands_all_land(installed_home: Path, tmp_path: Path) -> None:
    """Ten `meshctl` processes at once (apply, delete, rollback, route set): each lands once, in some order."""
    home = installed_home
    assert cli(home, "inject", str(BOOKINFO), "-o", str(tmp_path / "meshed.yaml"), "-p", "shop").code == 0
    (tmp_path / "base.yaml").write_text(DR + "---\n" + vs_doc("old", "old"))
    (tmp_path / "extra.yaml").write_text(vs_doc("extra", "extra"))
    assert cli(home, "apply", "-f", str(tmp_path / "base.yaml")).code == 0  # revision 1
    assert cli(home, "apply", "-f", str(tmp_path / "extra.yaml")).code == 0  # revision 2: rollback 1 changes it
    versions = MeshedPods.of(MeshHome(home)).versions()
    ops: dict[str, dict[str, Any]] = {}
    commands = []
    for i in range(5):
        f = tmp_path / f"a{i}.yaml"
        f.write_text(vs_doc(f"a{i}", f"a{i}"))
        ops[f"apply VirtualService/a{i}"] = {"kind": "apply", "resources": load([str(f)])}
        commands.append(["apply", "-f", str(f)])
    ops["delete VirtualService/old"] = {"kind": "delete", "name": "old"}
    commands.append(["delete", "virtualservice", "old"])
    ops["rollback to revision 1"] = {"kind": "rollback", "to": 1}
    commands.append(["rollback", "1"])
    for service, to in (("ratings", ["v1"]), ("details", ["v1"]), ("reviews", ["v1=70", "v2=30"])):
        ops[f"route set {service}"] = {"kind": "route", "service": service, "to": to, "versions": versions[service]}
        commands.append(["route", "set", service, *(a for t in to for a in ("--to", t))])
    procs = [FORK.Process(target=_cli_child, args=(str(home), argv, str(tmp_path / f"log{i}")))
             for i, argv in enumerate(commands)]
    for p in procs:
        p.start()
    for i, p in enumerate(procs):
        p.join(60)
        assert p.exitcode == 0, (commands[i], (tmp_path / f"log{i}").read_text())

    history = whole_revisions(Store(home / "config"))
    assert len(history) == 3 + len(commands)
    assert sorted(rev.message for rev in history[3:]) == sorted(ops)  # each once
    for k in range(3, len(history)):
        op = ops[history[k].message]
        assert history[k].resources == replay(op, history[k - 1].resources, history), history[k].message
    listed = json.loads(cli(home, "history", "-o", "json").out)
    assert [h["revision"] for h in listed] == list(reversed(range(len(history))))


# --- writers killed mid-write ----------------------------------------------------------------------------

PAUSE_POINTS = ("fchmod", "fsync", "replace")  # atomic_write: temp created | data written | before and after rename


def _pausing_child(pipe: int, op: Callable[[], object], pause_at: int) -> None:
    """Run `op`, counting the calls it makes to PAUSE_POINTS; freeze before call number `pause_at`."""
    count = 0

    def pausing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            count += 1
            if count == pause_at:
                os.write(pipe, b"P")
                time.sleep(60)  # the parent SIGKILLs us here
            return real(*args, **kwargs)
        return call

    for name in PAUSE_POINTS:
        setattr(os, name, pausing(getattr(os, name)))
    op()
    os.write(pipe, f"D{count}".encode())


def run_child(op: Callable[[], object], pause_at: int) -> str:
    """Run `op` in a child process; SIGKILL it when it pauses. Returns "P" (killed) or "D<calls>" (finished)."""
    r, w = os.pipe()
    proc = FORK.Process(target=_pausing_child, args=(w, op, pause_at))
    proc.start()
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        message = os.read(r, 64).decode() if ready else "timeout"
        if message == "P":
            proc.kill()
        proc.join(30)
        assert message == "P" or proc.exitcode == 0, f"child failed: {message!r}, exit {proc.exitcode}"
        return message
    finally:
        os.close(r)
        if proc.is_alive():
            proc.kill()
            proc.join()


def kill_at_every_point(op: Callable[[], object], reset: Callable[[], None], check: Callable[[int], None]) -> int:
    """Kill `op` at each point it could be killed at (found by a first run to the end) and `check` the result."""
    reset()
    finished = run_child(op, 0)
    assert finished.startswith("D")
    points = int(finished[1:])
    assert points >= 2
    for point in range(1, points + 1):
        reset()
        assert run_child(op, point) == "P"
        check(point)
    return points


def big_resources(tag: str, count: int = 300) -> list[Resource]:
    return [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": f"{tag}-{i}"}, "spec": {"hosts": [f"{tag}-{i}"], "note": tag * 40}}
            for i in range(count)]


def test_store_commit_killed_at_every_point_keeps_a_whole_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    pristine = tmp_path / "pristine"
    Store(pristine).init(0)
    Store(pristine).commit(lambda _: big_resources("old"), "old", 1)
    old, new = big_resources("old"), big_resources("new")

    def reset() -> None:
        shutil.rmtree(store.root, ignore_errors=True)
        shutil.copytree(pristine, store.root)

    seen = set()

    def check(point: int) -> None:
        rev = store.read()
        assert rev.resources in (old, new), point
        seen.add(rev.revision)
        assert [r.revision for r in whole_revisions(store, uncommitted=True)] == list(range(rev.revision + 1))
        nxt = store.commit(lambda rs: [*rs, {"kind": "VirtualService", "metadata": {"name": "after"}}], "after", 3)
        assert nxt.revision == rev.revision + 1  # a leftover temp or uncommitted revision is no obstacle
        assert store.read().resources[:-1] == rev.resources
        assert temp_files(store.root) == []  # the next writer removed what the killed one left

    kill_at_every_point(lambda: store.commit(lambda _: new, "new", 2), reset, check)
    assert seen == {1, 2}  # killed both before and after the commit point


def test_atomic_write_killed_at_every_point_keeps_old_or_new(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    old, new = os.urandom(1 << 20), os.urandom(1 << 20)

    def check(point: int) -> None:
        assert target.read_bytes() in (old, new), point
        atomic_write(target, b"next")  # a leftover temp file does not break the next write
        assert target.read_bytes() == b"next"

    for durable in (True, False):
        kill_at_every_point(functools.partial(atomic_write, target, new, durable=durable),
                            lambda: atomic_write(target, old), check)


def test_atomic_write_killed_at_random_moments(tmp_path: Path) -> None:
    """The same, by luck rather than design: SIGKILL a writer of large files after a random delay."""
    target = tmp_path / "data.bin"
    payloads = [bytes([i]) * (1 << 20) for i in range(3)]
    atomic_write(target, payloads[0])
    rng = random.Random(8)

    def writer() -> None:
        for i in range(1000):
            atomic_write(target, payloads[i % 3], durable=i % 4 == 0)

    for _ in range(12):
        proc = FORK.Process(target=writer)
        proc.start()
        time.sleep(rng.uniform(0.005, 0.05))
        proc.kill()
        proc.join(10)
        data = target.read_bytes()
        assert len(data) == 1 << 20 and data in payloads
    atomic_write(target, b"fine")
    assert target.read_bytes() == b"fine"


def test_settings_write_killed_at_every_point(installed_home: Path) -> None:
    home = MeshHome(installed_home)
    old = home.settings()
    new = replace(old, cert_ttl="1h", prometheus_port=9999)

    def check(point: int) -> None:
        assert home.settings() in (old, new), point

    kill_at_every_point(lambda: home.save_settings(new), lambda: home.save_settings(old), check)


def test_root_ca_write_killed_at_every_point_keeps_a_matching_pair(tmp_path: Path) -> None:
    """Bug fixed: the key and certificate were two renames; a kill between them left a key that did not match
    its certificate. The key file now carries the pair."""
    ca_dir = tmp_path / "ca"
    now = dt.datetime.now(dt.UTC)
    old, new = ca.create_root("cluster.local", now), ca.create_root("cluster.local", now)
    serials = {old.cert.serial_number, new.cert.serial_number}

    def check(point: int) -> None:
        loaded = ca.load_root(ca_dir)
        assert loaded.cert.serial_number in serials and ca.verify_root(loaded, now) == [], point

    assert kill_at_every_point(lambda: ca.save_root(new, ca_dir), lambda: ca.save_root(old, ca_dir), check) >= 8


def test_legacy_ca_key_file_without_its_certificate_still_loads(tmp_path: Path) -> None:
    root = ca.create_root("cluster.local", dt.datetime.now(dt.UTC))
    ca.save_root(root, tmp_path)
    key_file = tmp_path / ca.KEY_FILE
    key_file.write_bytes(key_file.read_bytes().split(b"-----BEGIN CERTIFICATE-----")[0])
    assert ca.load_root(tmp_path).cert.serial_number == root.cert.serial_number


def _rotation_home(installed_home: Path, stage: str | None) -> Path:
    home = MeshHome(installed_home)
    if stage is not None:
        citadel.root_stage(home, stage, dt.datetime.now(dt.UTC))
    pristine = installed_home.parent / f"pristine-{stage}"
    shutil.copytree(installed_home, pristine)
    return pristine


def test_root_rotation_killed_at_every_point_resumes(installed_home: Path) -> None:
    """Bugs fixed: a trust-both stage killed before it saved its state resumed with an empty state (a later
    `certs rotate --root` failed with KeyError); a reissue killed mid-swap left the CA key and certificate
    of different roots, and a leftover next-key.pem (a CA key) that nothing removed."""
    home = MeshHome(installed_home)
    now = dt.datetime.now(dt.UTC)
    first = ca.load_root(home.ca_dir).cert.serial_number
    for stage, before in (("trust-both", None), ("reissue", "trust-both")):
        pristine = _rotation_home(installed_home, before)

        def reset(pristine: Path = pristine) -> None:
            shutil.rmtree(home.ca_dir)
            shutil.copytree(pristine / "ca", home.ca_dir)

        def check(point: int, stage: str = stage) -> None:
            root = ca.load_root(home.ca_dir)
            assert ca.verify_root(root, now) == [], point  # the issuing pair matches at every point
            citadel.root_stage(home, stage, now)  # what `certs rotate --root` does when run again
            state = citadel.rotation_state(home)
            assert state is not None and state["stage"] == stage and state["old"] == f"{first:x}", point
            issuing = ca.load_root(home.ca_dir)
            assert ca.verify_root(issuing, now) == []
            bundle = citadel.trusted_serials((home.ca_dir / citadel.BUNDLE_FILE).read_bytes())
            assert bundle == {state["old"], state["new"]}
            if stage == "reissue":
                assert f"{issuing.cert.serial_number:x}" == state["new"]
                assert not list(home.ca_dir.glob("next-*.pem"))
                retired = ca.load_root(home.ca_dir / "retired", prefix=state["old"])
                assert retired.cert.serial_number == first

        kill_at_every_point(functools.partial(citadel.root_stage, home, stage, now), reset, check)
        reset()
        shutil.rmtree(pristine)


def test_workload_cert_killed_between_key_and_cert_is_renewed(installed_home: Path) -> None:
    """Bug fixed: a kill between key.pem and cert.pem left a pair that did not match until the next renewal (up
    to half a certificate's life); the agent's round now renews such a pair at once."""
    home = MeshHome(installed_home)
    directory = home.proxies_dir / "shop" / "ratings"
    directory.mkdir(parents=True)
    pod = Pod(service="ratings", sidecar="ratings-proxy", app="ratings", version="v1", mode="PERMISSIVE",
              exclude_inbound=(), exclude_outbound=(), published=())
    (directory / "proxy.json").write_text(json.dumps(describe(pod, [pod], "shop", "cluster.local")))
    now = dt.datetime.now(dt.UTC)
    root = ca.load_root(home.ca_dir)
    old, new = (workload.issue(root, "spiffe://cluster.local/ns/shop/sa/ratings", now) for _ in range(2))
    citadel.write_bundle(directory, citadel.trust_bundle(home))
    mismatched = []

    def check(point: int) -> None:
        assert (directory / "key.pem").read_bytes() in (old.key_pem(), new.key_pem()), point
        assert (directory / "cert.pem").read_bytes() in (old.cert_pem(), new.cert_pem()), point
        if citadel.pair_matches(directory):
            assert citadel.renew_due(home, now) == []  # a good pair that is not due is left alone
        else:
            mismatched.append(point)
            assert citadel.renew_due(home, now) == ["shop.ratings"]
            assert citadel.pair_matches(directory)

    kill_at_every_point(lambda: citadel.write_cert(directory, new), lambda: citadel.write_cert(directory, old), check)
    assert mismatched  # the window exists, and is repaired


def _hold_lock(lock: str, pipe: int) -> None:
    with locked(Path(lock)):
        os.write(pipe, b"L")
        time.sleep(60)


def test_lock_of_a_killed_writer_does_not_block_the_next(tmp_path: Path) -> None:
    store = Store(tmp_path / "config")
    store.init(0)
    lock = store.root / ".lock"
    r, w = os.pipe()
    proc = FORK.Process(target=_hold_lock, args=(str(lock), w))
    proc.start()
    os.close(w)
    try:
        assert select.select([r], [], [], 30)[0] and os.read(r, 1) == b"L"
        fd = os.open(lock, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # the lock is real while its holder lives
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        writer = threading.Thread(target=store.commit, args=(lambda _: big_resources("x", 1), "x", 1), daemon=True)
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and store.current_number() == 0  # waiting for the holder
        proc.kill()
        writer.join(10)
        assert not writer.is_alive() and store.current_number() == 1  # the kernel released it
    finally:
        os.close(r)
        proc.kill()
        proc.join()


# --- a full disk -----------------------------------------------------------------------------------------

def fake_enospc_on(monkeypatch: pytest.MonkeyPatch, name_part: str) -> None:
    """Make fsync of temp files whose name contains `name_part` fail as on a full disk (no root needed)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if name_part in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_simulated_full_disk_between_revision_and_pointer_leaves_nothing(installed_home: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug fixed: the revision file was written, the pointer was not, and the revision stayed: `history` listed
    it and `rollback` restored it though it was never committed."""
    config = installed_home / "config"
    before = tree(config)
    fake_enospc_on(monkeypatch, ".current.")
    with pytest.raises(PermissionProblem) as info:
        Store(config).commit(lambda _: big_resources("x", 1), "x", 1)
    assert info.value.one_line() == f"cannot write {config / 'current'}: no space left on device; free some disk " \
                                    "space and retry"
    assert tree(config) == before
    (installed_home / "vs.yaml").write_text(vs_doc("a", "a"))
    done = cli(installed_home, "apply", "-f", str(installed_home / "vs.yaml"))
    assert done.code == ExitCode.PERMISSION and "no space left on device" in one_error_line(done.err)
    assert tree(config) == before
    monkeypatch.undo()
    assert cli(installed_home, "apply", "-f", str(installed_home / "vs.yaml")).code == 0
    assert Store(config).current_number() == 1


def test_uncommitted_revision_is_not_history(installed_home: Path) -> None:
    """What a writer killed between the two writes leaves: a whole revision past the pointer."""
    store = Store(installed_home / "config")
    (store.root / "revisions" / "000001.json").write_text(json.dumps(
        {"revision": 1, "time": 1, "message": "never committed", "resources": big_resources("x", 1)}))
    assert [r.revision for r in store.history()] == [0]
    with pytest.raises(UsageError, match="revision 1 does not exist"):
        store.read(1)
    assert cli(installed_home, "rollback", "1").code == ExitCode.USAGE
    assert store.commit(lambda _: [], "noop", 2).revision == 0
    assert store.commit(lambda _: big_resources("y", 1), "y", 2).revision == 1
    assert store.read().message == "y"


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mount_point`, unmounted whatever happens to the test."""
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small-fs", "256k") as mount_point:
        yield mount_point


@pytest.fixture
def own_fs(tmp_path: Path) -> Iterator[Path]:
    """A file system of its own, to remount read-only."""
    with tmpfs(tmp_path / "own-fs", "4m") as mount_point:
        yield mount_point


def fill(fs: Path) -> Path:
    """Fill `fs` to the last byte with one file."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * chunk):
                    pass
    return filler


def free(filler: Path, pages: int) -> None:
    size = filler.stat().st_size
    os.truncate(filler, max(0, (size // 4096 - pages) * 4096))


@needs_root
def test_full_disk_library_writes_fail_cleanly(small_fs: Path) -> None:
    home = MeshHome(make_home(small_fs / "home"))
    store = Store(home.config_dir)
    settings = home.settings()
    filler = fill(small_fs)
    before = tree(home.root)
    with pytest.raises(PermissionProblem, match="no space left on device"):
        store.commit(lambda _: big_resources("x", 1), "x", 1)
    with pytest.raises(PermissionProblem, match=re.escape(f"cannot write {home.settings_file}: no space left")):
        home.save_settings(replace(settings, cert_ttl="1h"))
    with pytest.raises(PermissionProblem, match="no space left on device"):
        ca.save_root(ca.create_root("cluster.local", dt.datetime.now(dt.UTC)), home.ca_dir)
    assert tree(home.root) == before and temp_files(home.root) == []
    free(filler, 1)  # room for the revision, none for the pointer: the revision must not stay
    with pytest.raises(PermissionProblem, match="current: no space left on device"):
        store.commit(lambda _: big_resources("x", 1), "x", 1)
    assert tree(home.root) == before and temp_files(home.root) == []
    free(filler, 16)  # room for small files, not for a large one
    with pytest.raises(PermissionProblem, match="no space left on device"):
        atomic_write(home.settings_file, b"x" * (200 << 10))
    assert tree(home.root) == before and temp_files(home.root) == []
    filler.unlink()
    assert store.commit(lambda _: big_resources("x", 1), "x", 1).revision == 1


@needs_root
def test_full_disk_cli_is_one_clear_line(small_fs: Path) -> None:
    home = make_home(small_fs / "home")
    base, manifest = small_fs.parent / "base.yaml", small_fs.parent / "vs.yaml"
    base.write_text(DR + "---\n" + vs_doc("old", "old"))
    manifest.write_text(vs_doc("reviews", "reviews"))
    assert cli(home, "apply", "-f", str(base)).code == 0  # revision 1
    fill(small_fs)
    before = tree(home)
    done = meshctl("apply", "-f", str(manifest), home=home)  # the console script's entry, as users run it
    assert done.code == ExitCode.PERMISSION
    revision = home / "config" / "revisions" / "000002.json"
    assert one_error_line(done.err) == f"error: cannot write {revision}: no space left on device; free some disk " \
                                       "space and retry"
    for argv in (["delete", "vs", "old"], ["rollback", "0"], ["apply", "-f", str(manifest)]):
        done = cli(home, *argv)
        assert done.code == ExitCode.PERMISSION and "no space left on device" in one_error_line(done.err), argv
    debug = cli(home, "--debug", "apply", "-f", str(manifest))
    assert debug.code == ExitCode.PERMISSION and "Traceback" in debug.err
    assert tree(home) == before and temp_files(home) == []
    assert cli(home, "get", "vs", "old").code == 0  # reading still works on a full disk


# --- a home that cannot be written -----------------------------------------------------------------------

@needs_root
def test_read_only_home_every_writer_says_so(own_fs: Path, tmp_path: Path) -> None:
    home = make_home(own_fs / "home")
    assert cli(home, "inject", str(BOOKINFO), "-o", str(tmp_path / "meshed.yaml"), "-p", "shop").code == 0
    (tmp_path / "base.yaml").write_text(DR + "---\n" + vs_doc("old", "old"))
    assert cli(home, "apply", "-f", str(tmp_path / "base.yaml")).code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(own_fs)], check=True)
    before = tree(home)
    done = meshctl("apply", "-f", str(tmp_path / "base.yaml"), home=home)
    assert done.code == ExitCode.PERMISSION
    assert one_error_line(done.err) == f"error: cannot lock {home / 'config' / '.lock'}: read-only file system; " \
                                       "remount it read-write, or point MESHCTL_HOME at a writable directory"
    for argv in (["delete", "vs", "old"], ["rollback", "0"], ["route", "set", "reviews", "--to", "v1"],
                 ["route", "delete", "reviews"], ["mtls", "set", "--mode", "strict"],
                 ["certs", "rotate", "--all"], ["certs", "rotate", "reviews"], ["certs", "rotate", "--root"]):
        done = cli(home, *argv)
        assert done.code == ExitCode.PERMISSION, (argv, done.err)
        line = one_error_line(done.err)
        assert str(home) in line and "read-only file system" in line, (argv, line)
    assert tree(home) == before
    # install, without an engine, gets as far as a new home (an installed one asks the engine about its addons)
    done = cli(own_fs / "new-home", "install")
    assert done.code == ExitCode.PERMISSION
    assert one_error_line(done.err) == f"error: the mesh home {own_fs / 'new-home'} is not writable ({own_fs} is " \
                                       "on a read-only file system); remount it read-write, or set MESHCTL_HOME to " \
                                       "a writable directory"


NOBODY = 65534


def _as_nobody(pipe: int, home: str, argv: list[str]) -> None:
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    out = io.StringIO()
    code = run(argv, obj=quiet_context(Path(home), out, out))
    os.write(pipe, out.getvalue().encode())
    sys.exit(code)


def as_nobody(*argv: str, home: Path) -> Done:
    """The CLI in a process of user nobody (forked: the venv's interpreter may be out of nobody's reach)."""
    r, w = os.pipe()
    proc = FORK.Process(target=_as_nobody, args=(w, str(home), list(argv)))
    proc.start()
    os.close(w)
    with os.fdopen(r, "rb") as output:
        text = output.read().decode()
    proc.join(30)
    assert proc.exitcode is not None
    return Done(proc.exitcode, "", text)


@needs_root
def test_home_of_another_user_is_a_permission_error() -> None:
    """Bug fixed: a home the user may not enter failed with "unexpected PermissionError ... report it"."""
    shared = Path(tempfile.mkdtemp(prefix="meshctl-perm-"))
    try:
        shared.chmod(0o755)
        home = make_home(shared / "home")  # root's, mode 0700
        manifest = shared / "vs.yaml"
        manifest.write_text(vs_doc("reviews", "reviews"))
        manifest.chmod(0o644)
        before = tree(home)
        done = as_nobody("apply", "-f", str(manifest), home=home)
        assert done.code == ExitCode.PERMISSION, done.err
        line = one_error_line(done.err)
        assert str(home) in line and "permission denied" in line and "MESHCTL_HOME" in line
        for path in (home, *home.rglob("*")):  # now the user's own home, but the store's directory is read-only:
            os.chown(path, NOBODY, NOBODY)  # the revision can be written, the pointer cannot, and the revision goes
        (home / "config").chmod(0o500)
        done = as_nobody("apply", "-f", str(manifest), home=home)
        assert done.code == ExitCode.PERMISSION, done.err
        assert one_error_line(done.err) == f"error: cannot write {home / 'config' / 'current'}: permission denied; " \
                                           "check the owner and mode of the mesh home, or point MESHCTL_HOME at a " \
                                           "writable directory"
        assert tree(home) == before
    finally:
        shutil.rmtree(shared)


def test_unknown_os_errors_still_name_the_file(installed_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError the library did not translate still gets one line naming the path, not "report it"."""
    def broken(_: Context, __: object) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(installed_home / "x"))

    monkeypatch.setattr(changes, "apply", broken)
    (installed_home / "vs.yaml").write_text(vs_doc("a", "a"))
    done = cli(installed_home, "apply", "-f", str(installed_home / "vs.yaml"))
    assert done.code == ExitCode.PERMISSION
    assert one_error_line(done.err).startswith(f"error: cannot access {installed_home / 'x'}: permission denied")

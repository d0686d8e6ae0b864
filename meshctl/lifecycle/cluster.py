"""`meshctl cluster init | join | leave | status`: one mesh over several Docker engines, on Docker Swarm.

The CLI's engine is the manager. Swarm gives membership and the attachable overlay network that sidecars on
every node join; pods still run as plain compose containers on each node (swarm services cannot share a
network namespace). Nodes are Docker contexts; meshctl's images reach them through the engine API.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from docker import DockerClient
from docker.models.containers import Container
from docker.models.networks import Network

from meshctl import const
from meshctl.context import Context
from meshctl.errors import Conflict, EngineError, MeshError, UsageError
from meshctl.home import MeshSettings
from meshctl.runtime import deployments, network, nodes, shipping, swarm
from meshctl.runtime.engine import engine_errors
from sidecar.contract import PORT_HEALTH, PROXY_UID

Progress = Callable[[str], None]
COMPOSE_PROJECT: Final = "com.docker.compose.project"
SIDECARS: Final = {"label": [f"{const.LABEL_COMPONENT}=sidecar"]}
PROBE_TIMEOUT_S: Final = 2
SHOWN_NAMES: Final = 6


@dataclass(frozen=True)
class Done:
    """One line of an account: what a step found or did."""
    title: str
    text: str
    changed: bool


def _settings(ctx: Context) -> MeshSettings:
    return ctx.home.settings()  # NotInstalled when there is no mesh


# --- init -------------------------------------------------------------------------------------------------------

def init(ctx: Context, advertise_addr: str | None, progress: Progress) -> list[Done]:
    """Make the CLI's engine a swarm manager with the mesh network as an attachable overlay; idempotent.
    Whatever would be refused (a bridge in use, a worker engine) is refused before anything changes."""
    settings = _settings(ctx)
    client = ctx.docker()
    bridge = _replaceable_bridge(client, settings)
    done = [_init_swarm(client, advertise_addr), _overlay(client, settings, bridge, progress)]
    if not settings.cluster:
        settings.cluster = True
        ctx.home.save_settings(settings)
        done.append(Done("settings", f"cluster: true in {ctx.home.settings_file}", True))
    return done


def _init_swarm(client: DockerClient, advertise_addr: str | None) -> Done:
    member = _usable(swarm.membership(client))
    if member.state == swarm.INACTIVE:
        try:
            swarm.init(client, advertise_addr)
        except EngineError as exc:
            if advertise_addr is None and "advertise" in exc.message:  # an engine with several addresses
                raise EngineError(exc.message, "pick the address other nodes reach it at: "
                                  "`meshctl cluster init --advertise-addr ADDR`") from exc
            raise
        member = swarm.membership(client)
        return Done("swarm", f"created a swarm; nodes join at {member.manager_addr()}", True)
    return Done("swarm", f"already a manager of swarm {member.cluster_id[:12]} (nodes join at "
                f"{member.manager_addr()})", False)


def _usable(member: swarm.Membership) -> swarm.Membership:
    """This engine's membership, if it can be (or become) the cluster's manager."""
    if member.state != swarm.INACTIVE and not member.active:
        raise Conflict(f"this Docker engine's swarm membership is {member.state!r}, not active",
                       "see `docker info`; `docker swarm leave --force` starts over")
    if member.active and not member.manager:
        raise Conflict("this Docker engine is a swarm worker; the mesh's own engine must be a swarm manager",
                       "point meshctl at a manager (DOCKER_HOST or `docker context use`), or `docker swarm leave` "
                       "this one first")
    return member


def _replaceable_bridge(client: DockerClient, settings: MeshSettings) -> Network | None:
    """The mesh's bridge that the overlay replaces (None: there is none, or it is an overlay already);
    refused unless it is meshctl's own and nothing uses it."""
    _usable(swarm.membership(client))
    name = settings.network
    net = network.find_network(client, name)
    if net is None:
        return None
    if net.attrs.get("Driver") == "overlay":
        network.check_network(net, settings.network_subnet, overlay=True)
        return None
    if net.attrs.get("Driver") != "bridge" or (net.attrs.get("Labels") or {}).get(const.LABEL_MANAGED) != "true":
        raise Conflict(f"network {name!r} exists and is not meshctl's bridge ({net.attrs.get('Driver')} network)",
                       f"remove it (`docker network rm {name}`) and run `meshctl cluster init` again")
    _refuse_busy(name, network.attached(client, net))
    return net


def _overlay(client: DockerClient, settings: MeshSettings, bridge: Network | None, progress: Progress) -> Done:
    name = settings.network
    how = "created"
    if bridge is not None:
        progress(f"removing the bridge {name!r}")
        network.remove_network(bridge)
        how = "replaced the bridge with"
    elif network.find_network(client, name) is not None:
        return Done("network", f"{name!r} is already an attachable overlay", False)
    progress(f"creating the attachable overlay {name!r}")
    created = network.create_network(client, name, settings.network_subnet, overlay=True)
    with engine_errors(f"inspect network {name}"):
        created.reload()
    subnets = ", ".join(network.network_subnets(created)) or "a subnet Docker picks"
    return Done("network", f"{how} an attachable overlay {name!r} on {subnets}", True)


def _refuse_busy(name: str, users: list[Container]) -> None:
    """A bridge with containers on it cannot become an overlay: say whose they are and how to stop them."""
    if not users:
        return
    names = sorted(c.name for c in users)
    listed = ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES
                                                else "")
    projects = sorted({c.labels[COMPOSE_PROJECT] for c in users if c.labels.get(COMPOSE_PROJECT)})
    addon = any(c.labels.get(const.LABEL_COMPONENT, "").startswith("addon") for c in users)
    steps = [f"`docker compose -p {p} down`" for p in projects]
    if addon:
        steps.append("`meshctl install --addons none` (install it again after init)")
    if len(projects) + addon < len(users):
        steps.append("`docker rm -f` the others")
    raise Conflict(f"network {name!r} is a bridge still used by {len(names)} container(s): {listed}",
                   f"run {', '.join(steps)}, then `meshctl cluster init` again")


# --- join and leave ---------------------------------------------------------------------------------------------

def manager(ctx: Context, settings: MeshSettings) -> tuple[DockerClient, swarm.Membership]:
    """The CLI's engine, checked to be the cluster's swarm manager."""
    client = ctx.docker()
    member = swarm.membership(client)
    if not settings.cluster or not member.active:
        raise Conflict("this mesh is not a cluster yet", "run `meshctl cluster init` first")
    if not member.manager:
        raise Conflict("the CLI's Docker engine is no longer a swarm manager", "point meshctl at the cluster's "
                       "manager (DOCKER_HOST or `docker context use`), or run `meshctl cluster init` again")
    return client, member


def _not_manager(name: str) -> None:
    if name in (nodes.MANAGER, nodes.DEFAULT_CONTEXT):
        raise UsageError(f"context {name!r} is the CLI's own engine, the cluster's manager",
                         "name the contexts of the other engines (`docker context ls`)")


def _joinable_name(name: str) -> None:
    if name == nodes.shown(nodes.MANAGER):  # `mesh.host: manager`, views and part files already mean the CLI's engine
        raise UsageError(f"a node cannot be called {name!r}: meshctl calls the CLI's own engine that",
                         "create another context for that engine (docker context create NAME --docker host=…) "
                         "and join that")


def join(ctx: Context, contexts: Iterable[str], progress: Progress, report: Callable[[str], None]) -> None:
    """Join each context's engine to the swarm as a worker, ship meshctl's images to it and record it.

    Every context is tried; each joined one is recorded at once. Failures are raised together at the end."""
    settings = _settings(ctx)
    client, member = manager(ctx, settings)
    token = swarm.worker_token(client)
    failures: list[tuple[str, MeshError]] = []
    for name in dict.fromkeys(contexts):
        try:
            report(_join_one(ctx, settings, client, member, token, name, progress))
        except MeshError as exc:
            failures.append((name, exc))
    _raise_all(failures, "join")


def _join_one(ctx: Context, settings: MeshSettings, client: DockerClient, member: swarm.Membership, token: str,
              name: str, progress: Progress) -> str:
    _not_manager(name)
    _joinable_name(name)
    node = ctx.engine(name)
    theirs = swarm.membership(node, f"read the swarm state of context {name!r}")
    if theirs.node_id and theirs.node_id == member.node_id:
        raise UsageError(f"context {name!r} reaches the manager's own engine", "name another engine's context")
    if theirs.active and theirs.node_id in {n.id for n in swarm.nodes(client)}:
        what = "already in this swarm"
    elif theirs.state != swarm.INACTIVE:
        raise Conflict(f"the engine of context {name!r} is already in another swarm (state {theirs.state})",
                       f"make it leave first: `docker --context {name} swarm leave` (add --force on a manager), "
                       "then join it again")
    else:
        addr = member.manager_addr()
        progress(f"{name}: joining the swarm at {addr}")
        try:
            swarm.join(node, addr, token, f"join the engine of context {name!r} to the swarm at {addr}")
        except EngineError as exc:
            if "advertise" not in exc.message:
                raise
            raise EngineError(exc.message, f"join it by hand with the address the others reach it at: `docker "
                              f"--context {name} swarm join --advertise-addr ADDR --token $(docker swarm join-token "
                              f"-q worker) {addr}`, then `meshctl cluster join {name}` again") from exc
        what = f"joined the swarm at {addr}"
    sent = shipping.ship(client, node, name, shipping.wanted(settings.base_image, settings.proxy_image), progress)
    if name not in settings.nodes:
        settings.nodes.append(name)
        ctx.home.save_settings(settings)
    return f"{name}: {what}; images: {', '.join(sent) if sent else 'already there'}"


def _raise_all(failures: list[tuple[str, MeshError]], verb: str) -> None:
    if not failures:
        return
    if len(failures) == 1:
        raise failures[0][1]
    first = failures[0][1]
    error = MeshError(f"{len(failures)} contexts did not {verb}: "
                      + "; ".join(f"{exc.one_line()}" for _, exc in failures),
                      details=[f"{name}: {exc.one_line()}" for name, exc in failures])
    error.code = first.code  # the first failure's kind decides the exit code
    raise error


def leave(ctx: Context, contexts: Iterable[str], force: bool, report: Callable[[str], None]) -> None:
    """Take nodes out: refuse while meshctl pods run there; `swarm leave` on the node; forget it.

    With `force`, a node whose engine does not answer is forgotten all the same (its swarm entry stays
    until `docker node rm`)."""
    settings = _settings(ctx)
    client, _ = manager(ctx, settings)
    failures: list[tuple[str, MeshError]] = []
    for name in dict.fromkeys(contexts):
        try:
            report(_leave_one(ctx, settings, client, name, force))
        except MeshError as exc:
            failures.append((name, exc))
    _raise_all(failures, "leave")


def _leave_one(ctx: Context, settings: MeshSettings, client: DockerClient, name: str, force: bool) -> str:
    _not_manager(name)
    if name not in settings.nodes:
        raise UsageError(f"context {name!r} is not a node of this mesh",
                         f"its nodes: {', '.join(settings.nodes) or 'none yet'}")
    try:
        node = ctx.engine(name)
    except EngineError as exc:
        if not force:
            raise EngineError(exc.message, f"start it, or forget it with `meshctl cluster leave --force {name}` "
                              "and `docker node rm` it") from exc
        _forget(ctx, settings, name)
        return f"{name}: not answering; forgotten (remove its swarm entry with `docker node rm`)"
    with engine_errors(f"list the sidecars on context {name!r}"):
        # a project's anchor holds its overlays on the node: it goes with `meshctl down`, as the pods do
        pods = [c for c in node.containers.list(filters={"label": [f"{const.LABEL_MANAGED}=true"]})
                if c.labels.get(const.LABEL_COMPONENT) in ("sidecar", deployments.COMPONENT_ANCHOR)]
    if pods:
        names = sorted(c.name for c in pods)
        raise Conflict(f"meshctl pods still run on {name}: {', '.join(names)}",
                       f"stop them first (`meshctl down FILE`, or `docker --context {name} compose -p PROJECT down`)")
    theirs = swarm.membership(node, f"read the swarm state of context {name!r}")
    what = "was in no swarm"
    if theirs.state != swarm.INACTIVE:
        swarm.leave(node, f"make context {name!r}'s engine leave the swarm")
        with contextlib.suppress(EngineError):  # the entry shows as Down until removed; removal is tidiness
            swarm.remove_node(client, theirs.node_id)
        what = "left the swarm"
    _forget(ctx, settings, name)
    return f"{name}: {what}"


def _forget(ctx: Context, settings: MeshSettings, name: str) -> None:
    settings.nodes = [n for n in settings.nodes if n != name]
    ctx.home.save_settings(settings)


# --- status -----------------------------------------------------------------------------------------------------

@dataclass
class NodeStatus:
    node: str  # the context that reaches it ("manager" for the CLI's engine), "" if none does
    hostname: str = ""
    role: str = ""
    state: str = ""  # the swarm's: Ready, Down, Unknown, Disconnected
    availability: str = ""
    address: str = ""
    engine: str = ""
    sidecars: int | None = None  # running meshctl sidecars; None when the engine cannot be asked
    problem: str | None = None  # Down, UNREACHABLE (reason), NOT IN SWARM

    @property
    def status(self) -> str:
        return self.problem or self.state


@dataclass
class Reach:
    source: str
    target: str
    ok: bool
    ms: float | None
    detail: str  # "ok", "HTTP 503", or why it failed


@dataclass
class ClusterStatus:
    nodes: list[NodeStatus] = field(default_factory=list)
    reach: list[Reach] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(n.problem is None for n in self.nodes) and all(r.ok for r in self.reach)


@dataclass
class _Engine:
    name: str
    client: DockerClient | None = None
    node_id: str = ""
    problem: str | None = None
    sidecars: list[Container] = field(default_factory=list)


def status(ctx: Context) -> ClusterStatus:
    settings = _settings(ctx)
    client, member = manager(ctx, settings)
    engines = [_Engine(nodes.MANAGER, client, member.node_id)]
    engines += _connect_all(ctx, settings.nodes)
    for each in engines:
        _count_sidecars(each)
    swarm_nodes = swarm.nodes(client)
    by_id = {e.node_id: e for e in engines if e.node_id}
    out = ClusterStatus()
    unmatched = [e for e in engines if not e.node_id]  # never answered: no node id to match by
    for sn in swarm_nodes:
        engine = by_id.pop(sn.id) if sn.id in by_id else _by_address(unmatched, sn.addr)
        row = NodeStatus(nodes.shown(engine.name) if engine else "", sn.hostname, sn.role, sn.state.capitalize(),
                         sn.availability, sn.addr, sn.engine)
        problems = [] if sn.state == "ready" else [sn.state.capitalize()]
        if engine is not None:
            row.sidecars = len(engine.sidecars) if engine.client is not None else None
            problems += [engine.problem] if engine.problem else []
        row.problem = ", ".join(problems) or None
        out.nodes.append(row)
    for engine in unmatched:  # contexts that did not answer, matched to no swarm node
        out.nodes.append(NodeStatus(engine.name, problem=engine.problem))
    for engine in by_id.values():  # answering engines the swarm does not list
        out.nodes.append(NodeStatus(engine.name, sidecars=len(engine.sidecars),
                                    problem=f"NOT IN SWARM (run `meshctl cluster join {engine.name}`)"))
    out.reach = _probe_all([e for e in engines if e.client is not None and e.sidecars],
                           settings.network)
    return out


def _connect_all(ctx: Context, names: list[str]) -> list[_Engine]:
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        return list(pool.map(lambda name: _connect(ctx, name), names))


def _connect(ctx: Context, name: str) -> _Engine:
    engine = _Engine(name)
    try:
        client = ctx.engine(name)
        engine.node_id = swarm.membership(client, f"read the swarm state of context {name!r}").node_id
        engine.client = client
    except MeshError as exc:
        engine.problem = f"UNREACHABLE ({_why(name, exc)})"
    return engine


def _why(name: str, exc: MeshError) -> str:
    if isinstance(exc, UsageError):  # no such context
        return exc.message
    with contextlib.suppress(MeshError):
        return f"no answer from {nodes.context_host(name)}"
    return exc.message


def _count_sidecars(engine: _Engine) -> None:
    if engine.client is None:
        return
    try:
        with engine_errors(f"list the sidecars on {nodes.shown(engine.name)}"):
            engine.sidecars = sorted(engine.client.containers.list(filters=SIDECARS), key=lambda c: c.name)
    except EngineError as exc:
        engine.client, engine.problem = None, f"UNREACHABLE ({exc.message})"


def _by_address(candidates: list[_Engine], addr: str) -> _Engine | None:
    """The unreachable context whose engine host resolves to a swarm node's address (it cannot tell its id)."""
    for engine in candidates:
        with contextlib.suppress(MeshError, OSError, ValueError):
            host = urlsplit(nodes.context_host(engine.name)).hostname
            if host and addr and socket.gethostbyname(host) == addr:
                candidates.remove(engine)
                return engine
    return None


def _probe_all(engines: list[_Engine], network_name: str) -> list[Reach]:
    """From one sidecar on each node, the readiness port of one sidecar on every other node, over the overlay."""
    targets = {e.name: _overlay_ip(e.sidecars, network_name) for e in engines}
    pairs = [(a, b) for a in engines for b in engines if a is not b]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(pairs)))) as pool:
        return list(pool.map(lambda p: _probe(p[0], p[1].name, targets[p[1].name]), pairs))


def _overlay_ip(sidecars: list[Container], network_name: str) -> str | None:
    for c in sidecars:
        networks: dict[str, Any] = (c.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (networks.get(network_name) or {}).get("IPAddress")
        if ip:
            return str(ip)
    return None


def _probe(source: _Engine, target: str, ip: str | None) -> Reach:
    src, dst = nodes.shown(source.name), nodes.shown(target)
    if ip is None:
        return Reach(src, dst, False, None, f"no sidecar of {dst} is on the mesh network")
    url = f"http://{ip}:{PORT_HEALTH}/healthz/ready"
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", str(PROBE_TIMEOUT_S),
            url]
    try:
        with engine_errors(f"exec curl in {source.sidecars[0].name}"):
            # as the proxy's uid: its own traffic is exempt from the pod's capture rules
            code, raw = source.sidecars[0].exec_run(argv, user=str(PROXY_UID))
    except EngineError as exc:
        return Reach(src, dst, False, None, exc.message)
    status, _, took = (raw or b"").decode(errors="replace").strip().partition(" ")
    ms = _ms(took)
    if not status.isdigit() or status == "000":
        return Reach(src, dst, False, None, f"FAILED (no answer from {ip}:{PORT_HEALTH} in {PROBE_TIMEOUT_S}s)"
                     if code == 28 or status == "000" else f"FAILED (curl exit {code})")
    return Reach(src, dst, True, ms, "ok" if status == "200" else f"HTTP {status}")


def _ms(seconds: str) -> float | None:
    try:
        return round(float(seconds) * 1000, 1)
    except ValueError:
        return None


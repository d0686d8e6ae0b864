"""`meshctl check`: pre-flight and verification, one result per check (linkerd check's habit).

Each check returns OK, WARN or FAIL with a detail and, unless OK, a hint saying what to do. Checks that
need the engine are reported as not run when it cannot be reached, so one cause shows once.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import docker.errors

from meshctl import const
from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.errors import MeshError
from meshctl.extras import prometheus
from meshctl.extras.prometheus import client as prom_client
from meshctl.extras.prometheus import config as prom_config
from meshctl.extras.prometheus import container as prom_container
from meshctl.pilot import dataplane
from meshctl.pki import agent, citadel, workload
from meshctl.pki import ca as pki
from meshctl.runtime import images, network
from meshctl.runtime.compose import find_compose
from meshctl.runtime.engine import MIN_API_VERSION


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Result:
    name: str
    state: State
    detail: str
    hint: str = ""


def _engine(ctx: Context) -> Result:
    client = ctx.docker()
    info = client.version()
    api = info.get("ApiVersion", "?")
    detail = f"Docker {info.get('Version', '?')} (API {api}) at {client.api.base_url}"
    if tuple(int(p) for p in api.split(".")) < tuple(int(p) for p in MIN_API_VERSION.split(".")):
        return Result("engine", State.FAIL, detail, f"meshctl needs API {MIN_API_VERSION} or newer")
    return Result("engine", State.OK, detail)


def _compose(ctx: Context) -> Result:
    tool = find_compose()
    if tool is None:
        return Result("compose", State.FAIL, "neither `docker compose` nor `docker-compose` was found",
                      "install the compose plugin, or Debian's docker-compose (`apt-get install docker-compose`)")
    return Result("compose", State.OK, f"{' '.join(tool.argv)} {tool.version} (compose v{tool.generation})")


def _home(ctx: Context) -> Result:
    root = ctx.home.root
    if not ctx.home.is_installed():
        return Result("mesh home", State.FAIL, f"{root} holds no mesh", "run `meshctl install`")
    mode = root.stat().st_mode & 0o777
    if mode != 0o700:
        return Result("mesh home", State.WARN, f"{root} has mode {mode:o}", f"run `chmod 700 {root}`")
    if not os.access(root, os.W_OK):
        return Result("mesh home", State.FAIL, f"{root} is not writable", "fix its owner or mode")
    revision = Store(ctx.home.config_dir).current_number()
    return Result("mesh home", State.OK, f"{root} (trust domain {ctx.home.settings().trust_domain}, "
                                         f"config revision {revision})")


def _ca(ctx: Context) -> Result:
    if not pki.has_root(ctx.home.ca_dir):
        return Result("root CA", State.FAIL, f"no CA in {ctx.home.ca_dir}", "run `meshctl install`")
    root = pki.load_root(ctx.home.ca_dir)
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    problems = pki.verify_root(root, now)
    if not problems:
        trust_domain = ctx.home.settings().trust_domain if ctx.home.is_installed() else const.DEFAULT_TRUST_DOMAIN
        issuance = workload.issuance_problem(root, trust_domain, now)
        problems += [issuance] if issuance else []
    if problems:
        return Result("root CA", State.FAIL, "; ".join(problems),
                      "start over with a new CA: `meshctl uninstall --purge --yes && meshctl install`")
    key_mode = (ctx.home.ca_dir / pki.KEY_FILE).stat().st_mode & 0o777
    if key_mode != 0o600:
        return Result("root CA", State.FAIL, f"the CA key has mode {key_mode:o}",
                      f"run `chmod 600 {ctx.home.ca_dir / pki.KEY_FILE}`")
    left = root.not_after - now
    detail = f"valid until {root.not_after:%Y-%m-%d} ({left.days} days left)"
    if left < dt.timedelta(days=const.CA_WARN_DAYS):
        return Result("root CA", State.WARN, detail, "rotate it soon with `meshctl certs rotate --root`")
    return Result("root CA", State.OK, detail)


def _network(ctx: Context) -> Result:
    settings = ctx.home.settings() if ctx.home.is_installed() else None
    name = settings.network if settings else const.NETWORK_NAME
    net = network.find_network(ctx.docker(), name)
    if net is None:
        return Result("network", State.FAIL, f"network {name!r} is missing", "run `meshctl install`")
    if (net.attrs.get("Labels") or {}).get(const.LABEL_MANAGED) != "true":
        return Result("network", State.WARN, f"network {name!r} was not created by meshctl",
                      "remove it and run `meshctl install`")
    kind = net.attrs.get("Driver")
    if settings and settings.cluster and kind != "overlay":  # pods on other nodes could not join a bridge
        return Result("network", State.FAIL, f"network {name!r} is a {kind}, and this mesh is a cluster",
                      "run `meshctl cluster init` to make it an attachable overlay")
    return Result("network", State.OK, f"{kind} {name!r} on {', '.join(network.network_subnets(net))}")


def _images(ctx: Context) -> Result:
    settings = ctx.home.settings() if ctx.home.is_installed() else None
    wanted = [settings.base_image, settings.proxy_image] if settings else [const.BASE_IMAGE, const.PROXY_IMAGE]
    missing = [ref for ref in wanted if images.find_image(ctx.docker(), ref) is None]
    if missing:
        return Result("images", State.FAIL, f"missing {', '.join(missing)}", "run `meshctl install`")
    return Result("images", State.OK, ", ".join(wanted))


def _iptables(ctx: Context) -> Result:
    """Transparent capture needs nat rules in the pod's namespace: try exactly that in a throwaway container."""
    settings = ctx.home.settings() if ctx.home.is_installed() else None
    ref = settings.proxy_image if settings else const.PROXY_IMAGE
    if images.find_image(ctx.docker(), ref) is None:
        return Result("iptables", State.FAIL, f"cannot test: image {ref} is missing", "run `meshctl install`")
    script = ("iptables -t nat -N MESHCTL_CHECK && iptables -t nat -A MESHCTL_CHECK -p tcp -j REDIRECT "
              f"--to-ports {const.PORT_OUTBOUND} && iptables -t nat -S MESHCTL_CHECK")
    try:
        out = ctx.docker().containers.run(ref, [script], entrypoint=["sh", "-c"], cap_add=["NET_ADMIN"],
                                          network_mode="none",
                                          remove=True, stdout=True, stderr=True, user="0",
                                          labels={const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "check"})
    except docker.errors.ContainerError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return Result("iptables", State.FAIL, f"nat rules failed in a NET_ADMIN container: {stderr[-1:]}",
                      "the kernel needs the iptable_nat / nf_nat modules (`modprobe iptable_nat`)")
    if b"REDIRECT" not in out:
        return Result("iptables", State.FAIL, "the REDIRECT rule did not take", "check the kernel's nat support")
    return Result("iptables", State.OK, "nat REDIRECT works in a container with NET_ADMIN")


def _workload_certs(ctx: Context) -> Result:
    """Workload certificates near expiry or expired, and whether the agent that renews them runs."""
    if not ctx.home.is_installed():
        return Result("workload certificates", State.FAIL, "no mesh here", "run `meshctl install`")
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    states = [state for _, state in citadel.cert_states(ctx.home, now)]
    bad = {s: states.count(s) for s in sorted(set(states) - {"VALID"})}
    detail = f"{len(states)} issued" + (f", {', '.join(f'{n} {s.lower()}' for s, n in bad.items())}" if bad else "")
    if "EXPIRED" in bad or "UNTRUSTED ISSUER" in bad:
        return Result("workload certificates", State.FAIL, detail, "re-issue them: `meshctl certs rotate --all`")
    if not agent.running(ctx.home):
        return Result("workload certificates", State.WARN, f"{detail}; the renewal agent is not running",
                      "start it with `meshctl install` (it renews certificates at half their life)")
    if bad:
        return Result("workload certificates", State.WARN, detail, "`meshctl certs rotate --all` renews them now")
    return Result("workload certificates", State.OK, f"{detail}, renewed at half life by the agent")


def _prometheus(ctx: Context) -> Result:
    """The prometheus addon: its container runs, its API answers, and it scrapes every running sidecar."""
    settings = ctx.home.settings()
    client = ctx.docker()
    container = prom_container.find_container(client)
    if container is None:
        return Result("prometheus", State.FAIL, f"the addon is selected but {prometheus.CONTAINER} is missing",
                      "run `meshctl install` (or `meshctl install --addons none` to drop it)")
    if container.status != "running":
        return Result("prometheus", State.FAIL, f"{prometheus.CONTAINER} is {container.status}",
                      f"run `meshctl install` to start it; see `docker logs {prometheus.CONTAINER}`")
    if not prom_container.owned_by(container, ctx.home):
        return Result("prometheus", State.WARN, f"{prometheus.CONTAINER} runs for another mesh home "
                      f"({container.labels.get(const.LABEL_HOME, '?')})", "`meshctl install` here runs it for this one")
    base = prom_container.web_url(container, settings)
    targets = prom_client.targets(base)
    # what a user opens: the published port (on the manager's loopback, in a cluster), not the engine's route
    shown = prom_container.base_url(prom_container.host_port(container) or settings.prometheus_port)
    where = " (on the manager)" if settings.cluster else ""
    up = [t for t in targets if t.get("health") == "up"]
    running = [p for p in dataplane.sidecars(ctx) if p.state == "running" and settings.network in p.addresses]
    detail = f"{shown}{where}: {len(up)}/{len(targets)} sidecar targets up"
    down = [f"{(t.get('labels') or {}).get('instance', '?')} ({t.get('lastError') or 'not scraped yet'})"
            for t in targets if t.get("health") != "up"]
    if down:
        return Result("prometheus", State.WARN, f"{detail}; not up: {', '.join(down)}",
                      f"see {shown}/classic/targets{where} and the sidecars' logs")
    if len(targets) != len(running):
        return Result("prometheus", State.WARN, f"{detail}, but {len(running)} sidecars run on network "
                      f"{settings.network!r}", f"discovery refreshes every {prom_config.DISCOVERY_REFRESH}: check "
                      f"again; if it persists, see {shown}/classic/service-discovery{where}")
    return Result("prometheus", State.OK, f"{detail}, scraped every {prom_config.SCRAPE_INTERVAL}")


LOCAL_CHECKS: list[Callable[[Context], Result]] = [_compose, _home, _ca, _workload_certs]
ENGINE_CHECKS: list[Callable[[Context], Result]] = [_network, _images, _iptables]
ADDON_CHECKS: dict[str, Callable[[Context], Result]] = {prometheus.NAME: _prometheus}


def _addon_checks(ctx: Context) -> list[Callable[[Context], Result]]:
    """Checks of the addons this mesh runs: an addon that is not installed is not reported."""
    try:
        selected = ctx.home.settings().addons if ctx.home.is_installed() else []
    except MeshError:
        return []  # the mesh home check reports unreadable settings
    return [ADDON_CHECKS[name] for name in selected if name in ADDON_CHECKS]


def run_checks(ctx: Context) -> list[Result]:
    results: list[Result] = []
    try:
        results.append(_engine(ctx))
        engine_ok = results[-1].state is not State.FAIL
    except MeshError as exc:
        results.append(Result("engine", State.FAIL, exc.message, exc.hint or ""))
        engine_ok = False
    for check in LOCAL_CHECKS:
        results.append(_guarded(check, ctx))
    for check in ENGINE_CHECKS + _addon_checks(ctx):
        if engine_ok:
            results.append(_guarded(check, ctx))
        else:
            name = check.__name__.lstrip("_")
            results.append(Result(name, State.FAIL, "not checked: the engine is unreachable",
                                  "fix the engine check first"))
    return results


def _guarded(check: Callable[[Context], Result], ctx: Context) -> Result:
    try:
        return check(ctx)
    except MeshError as exc:
        return Result(check.__name__.lstrip("_"), State.FAIL, exc.message, exc.hint or "")
    except docker.errors.DockerException as exc:
        return Result(check.__name__.lstrip("_"), State.FAIL, f"engine error: {exc}", "see `meshctl check --debug`")

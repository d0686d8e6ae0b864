"""The injector: compose file in, meshed compose file out, plus each pod's identity and snapshot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.config.store import Store
from meshctl.context import Context
from meshctl.errors import InvalidInput, MeshError
from meshctl.fsutil import locked
from meshctl.inject import load, original, paths, placement, protocols, rewrite, yamlrt
from meshctl.inject.risks import capture_risk
from meshctl.mesh import Pod, ProxyInfo, proxy_dir
from meshctl.pilot.proxyfiles import write_proxy_files
from meshctl.pilot.snapshot import compile_snapshot, verified
from meshctl.pki import agent, citadel, workload
from meshctl.pki import ca as pki
from meshctl.runtime import delivery, images
from meshctl.runtime.compose import find_compose


@dataclass
class Result:
    text: str
    project: str
    pods: list[Pod]
    skipped: list[str]
    unchanged: bool = False
    warnings: tuple[str, ...] = ()  # already printed on the context's stderr console


def _fail(source: str, problems: list[str]) -> InvalidInput:
    more = f" (and {len(problems) - 1} more: see --debug)" if len(problems) > 1 else ""
    return InvalidInput(f"{source}: {problems[0]}{more}", details=[f"{source}: {p}" for p in problems])


def compose_v1_note(source: str, names: list[str], services: dict[str, Any]) -> tuple[str, ...]:
    """A line when the file declares `app_protocol` and this machine has only docker-compose 1.x, which refuses
    that key (the user's file as much as the meshed one, which keeps it as written): the label says the same."""
    using = [n for n in dict.fromkeys(names) if protocols.uses_app_protocol(services[n])]
    tool = find_compose() if using else None
    if tool is None or tool.generation != 1:
        return ()
    who = f"service {using[0]!r} declares" if len(using) == 1 else \
        f"services {', '.join(repr(n) for n in using)} declare"
    return (f"{source}: {who} `ports[].app_protocol`, which docker-compose "
            f"{tool.version} refuses (compose v2 accepts it); the label `{protocols.LABEL_PORT_PROTOCOLS}: "
            '"PORT=PROTOCOL,…"` declares the same for both',)


def _image_id(ctx: Context, ref: str) -> str:
    """The sidecar image's id, when an engine answers: inject also works offline, on files alone."""
    try:
        image = images.find_image(ctx.docker(), ref)
    except MeshError:
        return ""
    return image.id if image is not None else ""


def inject(ctx: Context, path: str | load.ComposeFile, project_name: str | None, default_mode: str,
           output_dir: Path | None = None, place: tuple[str, ...] = ()) -> Result:
    """Mesh the compose file at `path`; `output_dir` is where the result will live (None: stdout)."""
    compose = path if isinstance(path, load.ComposeFile) else load.load(path)
    if rewrite.is_meshed(compose.data):
        marker = compose.data[rewrite.MARKER]
        return Result(compose.text, str(marker.get("project", "")) if isinstance(marker, dict) else "", [], [],
                      unchanged=True)
    problems = load.check(compose)
    if problems:  # a broken structure first: what follows reads services, labels and ports as compose has them
        raise _fail(compose.source, problems)
    project = load.project_name(compose, project_name)
    pods, skipped, pod_problems = rewrite.plan_pods(compose, default_mode.upper())
    problems += pod_problems
    settings = ctx.home.settings()
    flags, flag_problems = placement.parse_flags(place)
    pods, place_problems = placement.place(pods, compose.data["services"], flags, settings.cluster, settings.nodes)
    problems += flag_problems + place_problems
    if problems:
        raise _fail(compose.source, problems)
    root = pki.load_root(ctx.home.ca_dir)
    revision = Store(ctx.home.config_dir).read()
    dirs = {p.service: proxy_dir(ctx.home.proxies_dir, project, p.service) for p in pods}
    mounts = {p.service: delivery.volume_name(project, p.service) for p in pods} if settings.cluster else \
        {k: str(v) for k, v in dirs.items()}
    data = rewrite.rewrite(compose, pods, project, mounts, settings.proxy_image, settings.trust_domain,
                           settings.network, _image_id(ctx, settings.proxy_image), cluster=settings.cluster)
    if settings.cluster and (unmeshed := placement.unmeshed_flags(flags, pods)):
        data[rewrite.MARKER][placement.MARKER_KEY] = unmeshed  # for `meshctl up`
    if output_dir is not None and output_dir.resolve() != compose.directory:
        data = paths.relocate(data, compose.directory)
    # The exact original rides along in the marker, for `meshctl uninject`. Made from several files, pass them
    # all and the merged model's text: uninject gives back that model and says the files were never changed.
    raw = compose.text.encode() if compose.files else original.source_bytes(compose.source, compose.text)
    data[rewrite.MARKER].update(original.record(list(compose.files) or [compose.source], raw, bool(compose.files)))
    text = original.seal(yamlrt.dump(data, like=compose.text))
    infos = [ProxyInfo(project, settings.trust_domain, pod, tuple(pods)) for pod in pods]
    snaps = [verified(i, compile_snapshot(i, revision.resources, revision.revision, settings)) for i in infos]
    # Everything is validated, each snapshot by its sidecar's own parser: only now write certificates and snapshots.
    now = dt.datetime.fromtimestamp(ctx.clock(), dt.UTC)
    with locked(ctx.home.ca_dir / ".lock"):  # as every issuance: the agent never sees a pair half-written
        for info, snap in zip(infos, snaps, strict=True):
            cert = workload.issue(root, info.identity, now, citadel.cert_ttl(ctx.home))
            write_proxy_files(dirs[info.pod.service], cert, citadel.trust_bundle(ctx.home), info.to_json(), snap)
    agent.ensure_running(ctx.home)  # renews these certificates at half their life from now on
    services = compose.data["services"]
    warnings = tuple(w for name in dict.fromkeys(p.host for p in pods) if (w := capture_risk(name, services[name])))
    warnings += compose_v1_note(compose.source, [p.host for p in pods], services)
    for warning in warnings:
        ctx.err.print(f"warning: {warning}", highlight=False, markup=False)
    return Result(text, project, pods, skipped, warnings=warnings)

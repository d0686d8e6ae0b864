"""uninject: a meshed compose file in, the user's own file out.

Untouched since inject, the file gives back the exact bytes inject kept in its marker (see inject.original).
Edited since (its hash no longer matches), it is refused unless forced: then what inject adds is removed
from the file as it now is (sidecar services, the keys inject set on each app, the mesh's network, the
marker), the namespace keys move back from each sidecar to its app, and every edit and comment stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.tokens import CommentToken

from meshctl import const
from meshctl.errors import Conflict, InvalidInput
from meshctl.inject import comments, original, rewrite, yamlrt
from meshctl.inject.load import labels_of, load_yaml, read_source

INJECTED_LABELS = (f"{const.LABEL_PREFIX}.injected", f"{const.LABEL_PREFIX}.sidecar-hash")


@dataclass
class Unmeshed:
    data: bytes
    exact: bool  # the original's bytes; False: meshctl's parts removed from the file as edited (--force)
    files: list[str] = field(default_factory=list)  # what inject read, when the marker says
    model: bool = False  # compose's resolved model of `files` (merged, interpolated): those files never changed


def read(path: str) -> tuple[str, str, CommentedMap]:
    """(source, text, document) of a meshed file; anything else is an error naming it."""
    text, source, _ = read_source(path, "give the path of a file `meshctl inject` wrote")
    data = load_yaml(text, source)
    if not isinstance(data, CommentedMap) or not rewrite.is_meshed(data) or not isinstance(data[rewrite.MARKER], dict) \
            or not isinstance(data.get("services"), dict):
        raise InvalidInput(f"{source} was not meshed by meshctl (no `{rewrite.MARKER}` mapping): nothing to undo",
                           "give the file `meshctl inject` wrote")
    return source, text, data


def uninject(path: str, force: bool = False) -> Unmeshed:
    source, text, data = read(path)
    marker = data[rewrite.MARKER]
    kept = None if force else original.kept(marker, source)
    if kept is not None and original.unchanged_since_inject(text, marker):
        return Unmeshed(kept.data, exact=True, files=kept.files, model=kept.model)
    if not force:
        why = "was edited after `meshctl inject` (its sha256 no longer matches the one inject recorded)" \
            if kept is not None else f"was meshed by meshctl {marker.get('version', '?')}, which kept no copy of it"
        raise Conflict(f"{source} {why}: the original cannot be given back byte for byte",
                       "pass --force to remove only what meshctl added, keeping your edits and comments as they are")
    entry = marker.get("original") if isinstance(marker.get("original"), dict) else {}
    files = entry.get("files")
    return Unmeshed(strip(data, like=text).encode(), exact=False,
                    files=[str(f) for f in files] if isinstance(files, list) else [], model=entry.get("model") is True)


def replaced_original(result: Unmeshed, output: Path, meshed: str) -> str | None:
    """The file inject read that `output` names, when writing there would replace it with compose's resolved
    model (merged, interpolated: not that file). Relative names are tried from here and from the meshed file."""
    if not result.model:
        return None
    bases = [Path.cwd()] + ([Path(meshed).resolve().parent] if meshed != "-" else [])
    target = output.resolve()
    return next((f for f in result.files for base in bases if (base / f).resolve() == target), None)


def _sidecars(services: dict[str, Any]) -> dict[str, str]:
    """app service -> its sidecar service, by what inject wrote: the sidecar label and `service:` mode."""
    sidecars = {name for name, svc in services.items() if isinstance(svc, dict)
                and labels_of(svc).get(const.LABEL_COMPONENT) == "sidecar"}
    out = {}
    for name, svc in services.items():
        mode = str(svc.get("network_mode", "")) if isinstance(svc, dict) else ""
        if mode.startswith("service:") and mode.removeprefix("service:") in sidecars:
            out[name] = mode.removeprefix("service:")
    return out


def _aliases(sidecar: dict[str, Any]) -> set[str]:
    nets = sidecar.get("networks")
    return {str(a) for n in (nets.values() if isinstance(nets, dict) else ()) if isinstance(n, dict)
            for a in n.get("aliases") or []}


def _replica_of(services: dict[str, Any], pods: dict[str, str], app: str, first: str) -> bool:
    """Whether `app` is a replica inject split off `first` (rewrite.instance_names): `first-N`, its sidecar
    aliased as `first`, with the same app and subset labels."""
    if first not in pods or not app.startswith(f"{first}-") or not app.removeprefix(f"{first}-").isdigit():
        return False
    mine, theirs = labels_of(services[pods[app]]), labels_of(services[pods[first]])
    keys = (f"{const.LABEL_PREFIX}.app", f"{const.LABEL_PREFIX}.subset")
    return all(mine.get(k) == theirs.get(k) for k in keys)


def _without_labels(labels: Any) -> Any:
    if isinstance(labels, list):
        return [x for x in labels if str(x).split("=", 1)[0] not in INJECTED_LABELS]
    for key in INJECTED_LABELS:
        labels.pop(key, None)
    return labels


def _networks(sidecar: dict[str, Any], mesh_network: str, added: set[str]) -> Any:
    """The app's networks as they were: the sidecar's, less the mesh's network and the aliases inject added
    (the app's name and its service's; compose gives every container its service name anyway)."""
    nets = sidecar.get("networks")
    if not isinstance(nets, dict):
        return nets
    out = CommentedMap()
    for name, conf in nets.items():
        if name == mesh_network:
            continue
        if isinstance(conf, dict):
            aliases = [a for a in conf.get("aliases") or [] if a not in added]
            if aliases:
                conf["aliases"] = aliases
            else:
                conf.pop("aliases", None)
        out[name] = conf or None
    if list(out) == ["default"] and out["default"] is None:
        return None
    return out


def _drop(mapping: CommentedMap, key: Any, end: list[CommentToken]) -> None:
    """Delete `key`, handing its comment lines (before it, after its value) to what follows, or to the end."""
    tokens = comments.take_before(mapping, key) + comments.pop_tail(mapping[key])
    keys = list(mapping)
    following = keys[keys.index(key) + 1] if keys.index(key) + 1 < len(keys) else None
    del mapping[key]
    if following is not None:
        comments.put_before(mapping, following, tokens)
    else:
        end += tokens


def strip(data: CommentedMap, like: str) -> str:
    """The text of `data` without what inject adds (edited in place); the rest, comments included, as it is."""
    end: list[CommentToken] = []
    marker = data[rewrite.MARKER]
    mesh_network = str(marker.get("network") or const.NETWORK_NAME)
    services = data["services"]
    pods = _sidecars(services)
    workloads = {app: next((a for a in sorted(_aliases(services[sidecar])) if _replica_of(services, pods, app, a)),
                           None) for app, sidecar in pods.items()}
    instances: dict[str, list[str]] = {}
    for app, sidecar_name in pods.items():
        workload = workloads[app]
        sidecar = services[sidecar_name]
        svc = services[app]
        svc.pop("network_mode", None)
        for key in rewrite.NAMESPACE_KEYS:
            if key in sidecar:
                svc[key] = sidecar[key]
        sidecar_labels = labels_of(sidecar)
        networks = _networks(sidecar, mesh_network, {app, sidecar_labels.get(f"{const.LABEL_PREFIX}.app", app),
                                                     workload or app})
        if networks is not None:
            svc["networks"] = networks
        deps = svc.get("depends_on")
        if isinstance(deps, dict):
            deps.pop(sidecar_name, None)
            if not deps:
                del svc["depends_on"]
        if isinstance(svc.get("labels"), (dict, list)):
            svc["labels"] = _without_labels(svc["labels"])
            if not svc["labels"]:
                del svc["labels"]
        _drop(services, sidecar_name, end)
        instances.setdefault(workload or app, []).append(app)
    for first, group in instances.items():  # a scaled service became one pod per replica: one service again
        for extra in group[1:] if len(group) > 1 else []:
            _drop(services, extra, end)
        if len(group) > 1:
            deploy = services[first].get("deploy")
            if isinstance(deploy, dict):
                deploy["replicas"] = len(group)
            else:
                services[first]["scale"] = len(group)
    networks = data.get("networks")
    if isinstance(networks, dict):
        networks.pop(mesh_network, None)
        if not networks:
            _drop(data, "networks", end)
    _drop(data, rewrite.MARKER, end)
    return yamlrt.dump(data, like=like) + "".join(" " * t.column + t.value.lstrip(" ") for t in end)

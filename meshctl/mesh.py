"""The mesh's model: the meshed pods, their names and identities, and the proxies/ tree that describes them.

    <home>/proxies/<project>/<service>/   what one sidecar may read, mounted read-only at /etc/meshctl
      proxy.json      the pod's static description, written once by inject (ProxyInfo)
      snapshot.json   its compiled config (pilot), cert.pem key.pem bundle.pem (citadel)

Everything that needs the meshed pods (pilot, pki, telemetry, the CLI) reads them through MeshedPods, so
proxy.json is parsed in one place. A low layer: it imports only meshctl's foundations and the sidecar's
contract (identities are the sidecar's own format, built and parsed there).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from meshctl.errors import InvalidInput, MeshError
from meshctl.fsutil import read_text
from meshctl.home import MeshHome
from sidecar.contract import Identity, IdentityError, parse_spiffe, spiffe_id

# The files of one proxy's directory.
PROXY_JSON: Final = "proxy.json"
SNAPSHOT_JSON: Final = "snapshot.json"
CERT_PEM: Final = "cert.pem"
KEY_PEM: Final = "key.pem"
BUNDLE_PEM: Final = "bundle.pem"

# The compose labels a pod's logical service and subset come from (Istio's).
LABEL_APP: Final = "app"
LABEL_VERSION: Final = "version"
REINJECT = "run `meshctl inject` again for its project to rewrite it"


@dataclass(frozen=True)
class Pod:
    """One meshed compose service: what the snapshot compiler and the proxy files need to know."""
    service: str
    sidecar: str
    app: str
    version: str
    mode: str
    exclude_inbound: tuple[int, ...]
    exclude_outbound: tuple[int, ...]
    published: tuple[int, ...]
    workload: str = ""  # the compose service it is an instance of (its DNS name); "" means `service` itself
    instance: int = 1
    port_protocols: tuple[tuple[int, str], ...] = ()  # declared: (port, "tcp" | "http"), see inject.protocols
    labels: tuple[tuple[str, str], ...] = ()  # the compose service's labels, which selectors and subsets match
    account: str = ""  # the service account of its identity ("" = the app)
    node: str = ""  # the Docker context of the host it runs on ("" = the CLI's own engine); see runtime.nodes

    @property
    def host(self) -> str:
        return self.workload or self.service

    @property
    def service_account(self) -> str:
        return self.account or self.app

    @property
    def label_map(self) -> dict[str, str]:
        """Its labels, with `app` and `version` as meshctl reads them (defaults included)."""
        return {str(k): str(v) for k, v in self.labels} | {LABEL_APP: self.app, LABEL_VERSION: self.version}


def proxy_name(project: str, service: str) -> str:
    """A proxy's name everywhere users see one: project.service."""
    return f"{project}.{service}"


def identity(trust_domain: str, project: str, pod: Pod) -> str:
    """The SPIFFE ID a pod's sidecar presents: its project is the namespace, its account the service account."""
    return spiffe_id(trust_domain, project, pod.service_account)


def principal(trust_domain: str, project: str, account: str) -> str:
    """Istio's principal for an account (its SPIFFE ID without the scheme), as AuthorizationPolicies name it."""
    return Identity(trust_domain, project, account).principal


def parse_identity(text: str) -> Identity:
    """A SPIFFE ID's parts; IdentityError (a ValueError) when `text` is not one."""
    return parse_spiffe(text)


def account_of(text: str) -> str | None:
    """The service account a SPIFFE ID names, or None when it is not one."""
    try:
        return parse_spiffe(text).account
    except IdentityError:
        return None


def proxy_dir(proxies_root: Path, project: str, service: str) -> Path:
    return proxies_root / project / service


@dataclass(frozen=True)
class ProxyInfo:
    """proxy.json: a proxy's static description (its project, trust domain, its pod, the project's pods)."""
    project: str
    trust_domain: str
    pod: Pod
    pods: tuple[Pod, ...]
    directory: Path | None = field(default=None, compare=False)  # where it was read from, if it was

    @property
    def name(self) -> str:
        return proxy_name(self.project, self.pod.service)

    @property
    def identity(self) -> str:
        return identity(self.trust_domain, self.project, self.pod)

    def identity_of(self, pod: Pod) -> str:
        return identity(self.trust_domain, self.project, pod)

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "trust_domain": self.trust_domain, "pod": asdict(self.pod),
                "pods": [asdict(p) for p in self.pods]}

    @classmethod
    def from_json(cls, data: Any, source: str = PROXY_JSON, directory: Path | None = None) -> ProxyInfo:
        """The typed description; InvalidInput naming `source` and the field when `data` is not one."""
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} is not a JSON object", REINJECT)
        for key in ("project", "trust_domain"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise InvalidInput(f"{source}: field {key} must be a non-empty string", REINJECT)
        if not isinstance(data.get("pods"), list):
            raise InvalidInput(f"{source}: field pods must be a list of pods", REINJECT)
        pod = _pod(data.get("pod"), source, "pod")
        pods = tuple(_pod(p, source, f"pods[{i}]") for i, p in enumerate(data["pods"]))
        return cls(data["project"], data["trust_domain"], pod, pods, directory)


def describe(pod: Pod, pods: list[Pod], project: str, trust_domain: str) -> dict[str, Any]:
    """proxy.json's content for `pod`, written once at inject time."""
    return ProxyInfo(project, trust_domain, pod, tuple(pods)).to_json()


def read_proxy_info(directory: Path) -> ProxyInfo:
    """One typed read of <directory>/proxy.json; a one-line error naming the file when it is missing or bad."""
    path = directory / PROXY_JSON
    if not path.is_file():
        raise MeshError(f"{path} is missing", REINJECT)
    try:
        data = json.loads(read_text(path))
    except (ValueError, RecursionError) as exc:  # bad JSON, an integer too long, nesting too deep
        raise InvalidInput(f"{path} is not valid JSON: {exc}", REINJECT) from None
    return ProxyInfo.from_json(data, str(path), directory)


class MeshedPods:
    """The pods meshed in a mesh home: proxies/<project>/<service>/proxy.json, read on each call."""

    def __init__(self, proxies_root: Path) -> None:
        self.root = proxies_root

    @classmethod
    def of(cls, home: MeshHome) -> MeshedPods:
        return cls(home.proxies_dir)

    def directory(self, project: str, service: str) -> Path:
        return proxy_dir(self.root, project, service)

    def directories(self) -> list[Path]:
        """Every proxy's directory (those holding a proxy.json), sorted by project then service."""
        return sorted(p.parent for p in self.root.glob(f"*/*/{PROXY_JSON}"))

    def read(self, directory: Path) -> ProxyInfo:
        return read_proxy_info(directory)

    def __iter__(self) -> Iterator[ProxyInfo]:
        return (read_proxy_info(d) for d in self.directories())

    def all(self) -> list[ProxyInfo]:
        return list(self)

    def find(self, name: str) -> ProxyInfo | None:
        """The proxy called `name` (project.service), or None."""
        project, _, service = name.partition(".")
        directory = self.directory(project, service)
        found = project and service and "/" not in name and (directory / PROXY_JSON).is_file()
        return read_proxy_info(directory) if found else None

    def versions(self) -> dict[str, set[str]]:
        """app -> the versions injected for it (no engine needed)."""
        out: dict[str, set[str]] = {}
        for info in self:
            out.setdefault(info.pod.app, set()).add(info.pod.version)
        return out


# proxy.json's pod fields: each value's check and conversion (JSON has lists where the Pod holds tuples).
def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ports(value: Any) -> tuple[int, ...] | None:
    return tuple(value) if isinstance(value, list | tuple) and all(_port(p) for p in value) else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _pairs(first: Callable[[Any], bool]) -> Callable[[Any], tuple[tuple[Any, str], ...] | None]:
    def convert(value: Any) -> tuple[tuple[Any, str], ...] | None:
        if not isinstance(value, list | tuple) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and first(p[0]) and isinstance(p[1], str) for p in value):
            return None
        return tuple((p[0], p[1]) for p in value)
    return convert


_FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "service": (_text, "a string"), "sidecar": (_text, "a string"), "app": (_text, "a string"),
    "version": (_text, "a string"), "mode": (_text, "a string"), "workload": (_text, "a string"),
    "account": (_text, "a string"), "node": (_text, "a string"), "instance": (_whole, "a whole number from 1"),
    "exclude_inbound": (_ports, "a list of port numbers"), "exclude_outbound": (_ports, "a list of port numbers"),
    "published": (_ports, "a list of port numbers"),
    "port_protocols": (_pairs(_port), "a list of [port, protocol] pairs"),
    "labels": (_pairs(lambda k: isinstance(k, str)), "a list of [name, value] pairs"),
}
_REQUIRED = frozenset(f.name for f in fields(Pod) if f.default is MISSING and f.default_factory is MISSING)


def _pod(data: Any, source: str, where: str) -> Pod:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{source}: field {where} must be an object", REINJECT)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"{source}: field {where}.{unknown[0]} is unknown (written by a newer meshctl?)", REINJECT)
    missing = sorted(_REQUIRED - set(data))
    if missing:
        raise InvalidInput(f"{source}: field {where}.{missing[0]} is missing", REINJECT)
    values = {}
    for key, value in data.items():
        convert, kind = _FIELDS[key]
        converted = convert(value)
        if converted is None:
            raise InvalidInput(f"{source}: field {where}.{key} must be {kind}", REINJECT)
        values[key] = converted
    return Pod(**values)

"""The mesh's Docker network, which every meshed pod joins: one labelled bridge on a single host, or in a cluster
(`meshctl cluster init`) one attachable swarm overlay of the same name that spans the nodes."""

from __future__ import annotations

from docker import DockerClient
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import IPAMConfig, IPAMPool

from meshctl import __version__, const
from meshctl.errors import Conflict
from meshctl.runtime.engine import engine_errors


def find_network(client: DockerClient, name: str) -> Network | None:
    with engine_errors(f"look up network {name}"):
        for net in client.networks.list(names=[name]):
            if net.name == name:  # names= filters by substring
                return net
    return None


def network_subnets(net: Network) -> list[str]:
    configs = (net.attrs.get("IPAM") or {}).get("Config") or []
    return [c["Subnet"] for c in configs if c.get("Subnet")]


def driver(overlay: bool) -> str:
    return "overlay" if overlay else "bridge"


def check_network(net: Network, subnet: str | None, overlay: bool = False) -> None:
    wanted = driver(overlay)
    if net.attrs.get("Driver") != wanted:
        hint = ("run `meshctl cluster init`, which replaces it with an overlay" if overlay and
                net.attrs.get("Driver") == "bridge" else
                f"remove it (`docker network rm {net.name}`) or let `meshctl uninstall` do it")
        article = "an" if overlay else "a"
        raise Conflict(f"network {net.name!r} exists but is a {net.attrs.get('Driver')} network, not {article} "
                       f"{wanted}", hint)
    if overlay and not net.attrs.get("Attachable"):
        raise Conflict(f"network {net.name!r} is an overlay that plain containers cannot join (not attachable)",
                       f"remove it (`docker network rm {net.name}`) and run `meshctl cluster init` again")
    if subnet and subnet not in network_subnets(net):
        raise Conflict(f"network {net.name!r} exists with subnet {', '.join(network_subnets(net))}, not {subnet}",
                       "run `meshctl uninstall` first to change the subnet, or drop --network-subnet")


def create_network(client: DockerClient, name: str, subnet: str | None, overlay: bool = False) -> Network:
    """The mesh network; an overlay is attachable, so the plain containers compose runs on any node join it."""
    ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]) if subnet else None
    extra = {"attachable": True} if overlay else {}
    with engine_errors(f"create network {name}"):
        return client.networks.create(
            name, driver=driver(overlay), ipam=ipam, check_duplicate=True,
            labels={const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "network",
                    const.LABEL_VERSION: __version__}, **extra,
        )


def attached(client: DockerClient, net: Network) -> list[Container]:
    """Containers that use the network, running or stopped (a stopped one would fail to start without it)."""
    with engine_errors(f"list the containers on network {net.name}"):
        found: list[Container] = client.containers.list(all=True, filters={"network": net.name})
    return found


def remove_network(net: Network) -> None:
    with engine_errors(f"remove network {net.name}"):
        net.remove()

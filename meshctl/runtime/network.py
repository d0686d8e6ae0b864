"""The mesh's Docker network: one labelled bridge that every meshed pod joins."""

from __future__ import annotations

from docker import DockerClient
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


def check_network(net: Network, subnet: str | None) -> None:
    if net.attrs.get("Driver") != "bridge":
        raise Conflict(f"network {net.name!r} exists but is a {net.attrs.get('Driver')} network, not a bridge",
                       f"remove it (`docker network rm {net.name}`) or let `meshctl uninstall` do it")
    if subnet and subnet not in network_subnets(net):
        raise Conflict(f"network {net.name!r} exists with subnet {', '.join(network_subnets(net))}, not {subnet}",
                       "run `meshctl uninstall` first to change the subnet, or drop --network-subnet")


def create_network(client: DockerClient, name: str, subnet: str | None) -> Network:
    ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]) if subnet else None
    with engine_errors(f"create network {name}"):
        return client.networks.create(
            name, driver="bridge", ipam=ipam, check_duplicate=True,
            labels={const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: "network",
                    const.LABEL_VERSION: __version__},
        )

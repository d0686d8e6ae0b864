"""The control plane's view of its data plane on every node: the sidecars each engine runs, found by label.

On one host this is runtime.proxies.list_proxies on the CLI's engine. In a cluster every node's engine is
listed (a node that does not answer is named, not fatal) and each sidecar is read through its own node's
engine API (runtime.reach), since overlay addresses are not routable from the CLI's host.
"""

from __future__ import annotations

from docker import DockerClient

from meshctl.context import Context
from meshctl.errors import UsageError
from meshctl.runtime.nodes import shown
from meshctl.runtime.proxies import Listing, Proxy, list_everywhere, list_proxies


def listing(ctx: Context, project: str | None = None) -> Listing:
    """Every sidecar (of `project`) on every node; on one host, those of the CLI's engine (errors raise)."""
    if not ctx.clustered():
        return Listing(list_proxies(ctx.docker(), project))
    return list_everywhere(ctx.engine, ctx.nodes(), project, routed=True)


def sidecars(ctx: Context, project: str | None = None) -> list[Proxy]:
    """The sidecars of the nodes that answered."""
    return listing(ctx, project).proxies


def engine_of(ctx: Context, proxy: Proxy) -> DockerClient:
    """The engine that runs `proxy`: for its logs, or a command in it."""
    return ctx.engine(proxy.node) if ctx.clustered() else ctx.docker()


def down_note(unreachable: dict[str, str]) -> str:
    """One line naming the nodes left out of a view, for the hint of an error or a footnote."""
    return "; ".join(f"node {shown(n)} does not answer ({why})" for n, why in sorted(unreachable.items()))


def refuse_in_cluster(ctx: Context, what: str) -> None:
    """For a reader that only works over the host's own bridge (a stream, not one exchange)."""
    if ctx.clustered():
        raise UsageError(f"{what} reads sidecars over the local bridge and does not work in a mesh that spans hosts",
                         "use `meshctl logs -f` (access logs through each node's engine) instead")

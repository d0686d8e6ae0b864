"""meshctl's images onto the other nodes of a cluster, with no registry: `docker save` on the manager streamed
into `docker load` on the node, both through the engine API, so nothing lands on the CLI's disk.

A node that already has the image (the same image id, or the same build-hash label: the same content built
there) is skipped, so shipping again after an unchanged install sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from docker import DockerClient

from meshctl import const
from meshctl.errors import EngineError, MeshError
from meshctl.runtime import images
from meshctl.runtime.engine import engine_errors, patient
from meshctl.runtime.nodes import shown

Progress = Callable[[str], None]
CHUNK: Final = 1 << 20  # read from the manager a MiB at a time
REPORT_EVERY: Final = 16 << 20  # a progress line per 16 MiB sent
MB: Final = 1 << 20
LOAD_TIMEOUT_S: Final = 900  # the node answers a load once every layer is in place


def same_image(manager: DockerClient, node: DockerClient, ref: str) -> bool:
    """The node has `ref` as the manager has it: the same id, or the same build-hash label."""
    mine, theirs = images.find_image(manager, ref), images.find_image(node, ref)
    if mine is None or theirs is None:
        return False
    if mine.id == theirs.id:
        return True
    mine_hash = images.image_label(mine, const.LABEL_BUILD_HASH)
    return mine_hash is not None and mine_hash == images.image_label(theirs, const.LABEL_BUILD_HASH)


def missing(manager: DockerClient, node: DockerClient, refs: Iterable[str]) -> list[str]:
    return [ref for ref in refs if not same_image(manager, node, ref)]


def ship(manager: DockerClient, node: DockerClient, node_name: str, refs: Iterable[str],
         progress: Progress) -> list[str]:
    """Copy each image in `refs` the node lacks; returns what was sent, e.g. ["meshctl/proxy:1.0 (130 MB)"]."""
    sent = []
    for ref in missing(manager, node, refs):
        image = images.find_image(manager, ref)
        if image is None:
            raise MeshError(f"cannot ship {ref} to {shown(node_name)}: the manager has no such image",
                            "run `meshctl install` first")
        total = _copy(manager, image, node, ref, node_name, progress)
        sent.append(f"{ref} ({total / MB:.0f} MB)")
    return sent


def _copy(manager: DockerClient, image: Any, node: DockerClient, ref: str, node_name: str,
          progress: Progress) -> int:
    counted = [0]

    def chunks() -> Iterator[bytes]:
        reported = 0
        with engine_errors(f"save image {ref} on the manager"):
            # the tarball keeps the tag we were asked for ("debian" is stored as "debian:latest")
            for chunk in image.save(chunk_size=CHUNK, named=ref if ref in image.tags else True):
                counted[0] += len(chunk)
                if counted[0] - reported >= REPORT_EVERY:
                    reported = counted[0]
                    progress(f"{ref} -> {shown(node_name)}: {reported / MB:.0f} MB sent")
                yield chunk

    doing = f"load image {ref} on node {shown(node_name)}"
    with engine_errors(doing), patient(node, LOAD_TIMEOUT_S), patient(manager, LOAD_TIMEOUT_S):
        for message in node.api.load_image(chunks()) or ():
            if isinstance(message, dict) and message.get("error"):
                raise EngineError(f"Docker engine refused to {doing}: {str(message['error']).strip()}",
                                  f"check `docker --context {node_name} info` (disk space) and run it again")
    progress(f"{ref} -> {shown(node_name)}: {counted[0] / MB:.0f} MB sent, loaded")
    return counted[0]


def wanted(base_image: str, proxy_image: str) -> list[str]:
    """What every node needs: the sidecar image, and the base image that samples and users' images are built
    FROM on the node itself (compose builds there). Each is saved whole, so the base's layers travel twice
    the first time; the engine stores them once."""
    return [base_image, proxy_image]

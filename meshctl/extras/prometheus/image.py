"""The prometheus addon's image: meshctl/prometheus:<version> on the base image, from Debian's `prometheus`
package and the packages its web UI takes its JavaScript and fonts from, downloaded by the host's apt (the
containers cannot reach the mirror). Rebuilt only when the Dockerfile, the base image or a package changes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from docker import DockerClient

from meshctl import const
from meshctl.errors import MeshError
from meshctl.extras.prometheus import COMPONENT, IMAGE
from meshctl.home import MeshSettings
from meshctl.runtime import images
from meshctl.runtime.engine import engine_errors

PACKAGE = "prometheus"  # Debian's
DOCKERFILE = images.DOCKERFILES / "prometheus.Dockerfile"
# What the image takes from the .deb: the two binaries, and the web UI (Debian ships the classic one).
DEB_MEMBERS = {path: path for path in ("usr/bin/prometheus", "usr/bin/promtool", "usr/share/prometheus/web")}
# The UI's JavaScript and fonts come from the packages Debian's prometheus depends on for them.
UI_PACKAGES = ("libjs-jquery", "libjs-jquery-hotkeys", "libjs-bootstrap4", "libjs-popper.js", "libjs-d3",
               "libjs-rickshaw", "libjs-moment", "libjs-moment-timezone", "libjs-eonasdan-bootstrap-datetimepicker",
               "libjs-mustache", "fonts-glyphicons-halflings")
UI_MEMBERS = {path: path for path in ("usr/share/javascript", "usr/share/nodejs", "usr/share/fonts-glyphicons",
                                      "usr/share/fonts/truetype/glyphicons")}
UI_SKIP = ("usr/share/javascript/moment-timezone/data",)  # 212 MB of raw zone data; the UI loads the bundled file


def engine_arch(client: DockerClient) -> str:
    """The engine's architecture as Debian names it (amd64, arm64): the .debs must match it, not the host's."""
    with engine_errors("ask the engine's architecture"):
        arch = str(client.version().get("Arch") or "amd64")
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)


def packages() -> list[str]:
    return [PACKAGE, *UI_PACKAGES]


def image_hash(client: DockerClient, settings: MeshSettings, debs: list[Path | None]) -> str | None:
    """The build hash wanted for the image; None while the base image is missing."""
    base = images.find_image(client, settings.base_image)
    if base is None:
        return None
    names = [deb.name if deb else f"{name} (not downloaded)" for name, deb in zip(packages(), debs, strict=True)]
    return images.tree_hash([DOCKERFILE], extra=[base.id, *names])


def image_pending(client: DockerClient, settings: MeshSettings, cache_dir: Path) -> str | None:
    arch = engine_arch(client)
    debs = [images.cached_deb(cache_dir, name, arch) for name in packages()]
    wanted = image_hash(client, settings, debs)
    current = images.find_image(client, IMAGE)
    if wanted and current and images.image_label(current, const.LABEL_BUILD_HASH) == wanted:
        return None
    missing = [name for name, deb in zip(packages(), debs, strict=True) if deb is None]
    if missing:
        images.require_apt(cache_dir, missing[0], arch)  # fail before anything is written
    source = f"the cached {debs[0].name}" if debs[0] else f"Debian's {PACKAGE} package"
    if missing:
        source += f" (apt-get download on this host: {len(missing)} packages)"
    return f"{'rebuild' if current else 'build'} {IMAGE} from {source}"


def build_image(client: DockerClient, settings: MeshSettings, cache_dir: Path, progress: images.Progress) -> str:
    debs = images.ensure_debs(cache_dir, packages(), engine_arch(client), progress)
    build_hash = image_hash(client, settings, list(debs))
    assert build_hash is not None, "the base image step runs first"
    current = images.find_image(client, IMAGE)
    if current and images.image_label(current, const.LABEL_BUILD_HASH) == build_hash:
        return f"{IMAGE} is up to date"
    with tempfile.TemporaryDirectory(prefix="meshctl-build-") as tmp:
        build_ctx = Path(tmp)
        progress(f"unpacking {debs[0].name} and the web UI's {len(debs) - 1} JavaScript and font packages")
        images.extract_deb(debs[0], DEB_MEMBERS, build_ctx)
        found: set[str] = set()
        for deb in debs[1:]:
            found |= images.extract_deb(deb, UI_MEMBERS, build_ctx, required=False, skip=UI_SKIP)
        if not found:
            raise MeshError("the web UI's packages hold none of " + ", ".join(UI_MEMBERS),
                            f"delete the libjs-*.deb files in {cache_dir} and let meshctl download them again")
        shutil.copy(DOCKERFILE, build_ctx / "Dockerfile")
        images.build_image(client, IMAGE, build_ctx, COMPONENT, build_hash, {"BASE": settings.base_image}, progress)
    return f"{IMAGE} built on {settings.base_image} from {debs[0].name}"

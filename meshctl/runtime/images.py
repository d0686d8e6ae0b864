"""Images built on this machine, with no registry and no package index reachable from containers.

- The base image comes from Debian packages: debootstrap into a folder, `docker import` it. The rootfs
  tarball is cached, so a second build after `uninstall` is an import of seconds, not a bootstrap.
- Python packages enter images from a wheelhouse built on the host with the host's pip.
- Each image carries a build-hash label over everything that goes into it: same hash, no rebuild.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import docker.errors
from docker import DockerClient
from docker.models.images import Image

from meshctl import __version__, const
from meshctl.errors import EngineError, MeshError, PermissionProblem, UsageError
from meshctl.fsutil import atomic_write, ensure_dir
from meshctl.runtime.engine import engine_errors

Progress = Callable[[str], None]
DOCKERFILES = Path(__file__).parent / "dockerfiles"


def labels(component: str, build_hash: str | None = None) -> dict[str, str]:
    out = {const.LABEL_MANAGED: "true", const.LABEL_COMPONENT: component, const.LABEL_VERSION: __version__}
    if build_hash:
        out[const.LABEL_BUILD_HASH] = build_hash
    return out


def find_image(client: DockerClient, ref: str) -> Image | None:
    try:
        with engine_errors(f"look up image {ref}"):
            return client.images.get(ref)
    except EngineError as exc:
        if isinstance(exc.__cause__, docker.errors.ImageNotFound):
            return None
        raise


def image_label(image: Image, key: str) -> str | None:
    return ((image.attrs.get("Config") or {}).get("Labels") or {}).get(key)


# --- base image -----------------------------------------------------------------------------------------

def base_build_hash(packages: Iterable[str] = const.BASE_PACKAGES) -> str:
    spec = f"{const.DEBIAN_SUITE}|{','.join(sorted(packages))}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def rootfs_cache(cache_dir: Path) -> Path:
    return cache_dir / f"base-{const.DEBIAN_SUITE}-{base_build_hash()}.tar"


def build_base_image(client: DockerClient, ref: str, cache_dir: Path, progress: Progress) -> str:
    """Import the cached Debian rootfs as `ref`, bootstrapping the rootfs first if it is not cached."""
    tarball = rootfs_cache(cache_dir)
    how = "imported the cached Debian rootfs"
    if not tarball.is_file():
        _debootstrap_tarball(tarball, progress)
        how = f"built from Debian packages with debootstrap (rootfs cached in {tarball})"
    progress(f"importing {tarball.name} as {ref}")
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    changes = [f"LABEL {k}={v}" for k, v in labels("base-image", base_build_hash()).items()]
    changes += ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'CMD ["/bin/bash"]']
    with engine_errors(f"import base image {ref}"), tarball.open("rb") as src:
        client.api.import_image(src=src, repository=repo, tag=tag, changes=changes)
    return how


def _debootstrap_tarball(tarball: Path, progress: Progress, suite: str = const.DEBIAN_SUITE,
                         packages: Iterable[str] = const.BASE_PACKAGES) -> None:
    if shutil.which("debootstrap") is None:
        raise MeshError("building the base image needs debootstrap, which is not installed",
                        "run `apt-get install debootstrap` (./install.sh does), or pass --base-image with a local "
                        "image that has python3 3.11 and iptables")
    if os.geteuid() != 0:
        raise PermissionProblem("building the base image with debootstrap needs root",
                                "run `sudo meshctl install` once (the result is cached), or pass --base-image")
    ensure_dir(tarball.parent, 0o755)
    mirror = os.environ.get("MESHCTL_DEBIAN_MIRROR", const.DEBIAN_MIRROR)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {suite} from {mirror} (about a minute)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
              suite, str(rootfs), mirror], "debootstrap", progress)
        # An image needs no apt lists or caches; dropping them saves ~20 MB per image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        progress("packing the rootfs")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], "tar", progress)
        os.replace(partial, tarball)  # the cache holds a complete tarball or none


def _run(argv: list[str], what: str, progress: Progress) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = [*tail[-9:], line]
            progress(f"{what}: {line[:100]}")
    if proc.wait() != 0:
        raise MeshError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail[-3:])}",
                        "see the lines above; rerun with --debug for the full output")


def pull_image(client: DockerClient, ref: str) -> bool:
    """Try to pull a user-named base image; False if no registry can give it to us."""
    try:
        client.images.pull(ref)
        return True
    except docker.errors.DockerException:
        return False


# --- wheelhouse -----------------------------------------------------------------------------------------

def wheelhouse_dir(cache_dir: Path, packages: Iterable[str] = const.PROXY_PYTHON_PACKAGES) -> Path:
    spec = "\n".join(sorted(packages))
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return cache_dir / f"wheelhouse-{python}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


def ensure_wheelhouse(cache_dir: Path, progress: Progress,
                      packages: Iterable[str] = const.PROXY_PYTHON_PACKAGES) -> Path:
    """Wheels for the image, built with the host's pip, whose index is reachable where containers' is not."""
    packages = list(packages)
    target = wheelhouse_dir(cache_dir, packages)
    done_marker = target / "requirements.txt"
    if done_marker.is_file():
        return target
    if sys.version_info[:2] != (3, 11):
        raise UsageError(f"the wheelhouse must be built with Python 3.11 to match the image, not "
                         f"{sys.version_info[0]}.{sys.version_info[1]}", "install meshctl in a Python 3.11 venv")
    if importlib.util.find_spec("pip") is None:  # a venv made --without-pip (uv's tools are)
        raise UsageError(f"the sidecar image's wheelhouse is built with pip, which meshctl's Python "
                         f"({sys.executable}) lacks", "install meshctl with pip or pipx, or run "
                         "`python -m ensurepip` with that Python")
    ensure_dir(target, 0o755)
    progress(f"building the wheelhouse: {' '.join(packages)}")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(target),
          *packages], "pip wheel", progress)
    atomic_write(done_marker, "\n".join(packages) + "\n")  # written last: marks the wheelhouse complete
    return target


# --- images built from a Dockerfile ---------------------------------------------------------------------

def tree_hash(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """A content hash of files and strings: the build-hash label that makes re-installing a no-op."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_image(client: DockerClient, ref: str, context_dir: Path, component: str, build_hash: str,
                buildargs: dict[str, str], progress: Progress) -> None:
    log: list[str] = []
    with engine_errors(f"build image {ref}"):
        for chunk in client.api.build(path=str(context_dir), tag=ref, buildargs=buildargs, pull=False, rm=True,
                                      forcerm=True, labels=labels(component, build_hash), decode=True):
            if "error" in chunk:
                raise MeshError(f"building {ref} failed: {chunk['error'].strip()}",
                                " | ".join(log[-3:]) or "rerun with --debug")
            line = (chunk.get("stream") or "").strip()
            if line:
                log.append(line)
                progress(f"{ref}: {line[:100]}")
    prune_dangling(client)


def prune_dangling(client: DockerClient) -> None:
    """A rebuild leaves the old image untagged; drop meshctl's own, leave everyone else's alone."""
    with engine_errors("prune old meshctl images"):
        client.images.prune(filters={"dangling": True, "label": f"{const.LABEL_MANAGED}=true"})


# --- Debian packages for addon images -------------------------------------------------------------------

def cached_deb(cache_dir: Path, package: str, arch: str) -> Path | None:
    """The newest `.deb` of `package` for `arch` (or `all`) in the cache (downloaded by meshctl or put there
    by hand)."""
    found = [p for suffix in (arch, "all") for p in cache_dir.glob(f"{package}_*_{suffix}.deb")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def ensure_deb(cache_dir: Path, package: str, arch: str, progress: Progress) -> Path:
    return ensure_debs(cache_dir, [package], arch, progress)[0]


def ensure_debs(cache_dir: Path, packages: list[str], arch: str, progress: Progress) -> list[Path]:
    """Debian packages for an image, fetched by the host's apt (containers cannot reach the mirror): the
    cached ones as they are, the others with one `apt-get download`, retried once after `apt-get update`."""
    missing = [name for name in packages if cached_deb(cache_dir, name, arch) is None]
    if missing:
        _download(cache_dir, missing, arch, progress)
    return [cached_deb(cache_dir, name, arch) or _gone(cache_dir, name) for name in packages]


def _gone(cache_dir: Path, package: str) -> Path:
    raise MeshError(f"{package}'s .deb vanished from {cache_dir} while meshctl was using it", "run the command again")


def _download(cache_dir: Path, packages: list[str], arch: str, progress: Progress) -> None:
    hint = require_apt(cache_dir, packages[0], arch)
    ensure_dir(cache_dir, 0o755)
    what = " ".join(packages)
    argv = ["apt-get", "download", "-q", *packages]
    if os.geteuid() == 0:
        argv[2:2] = ["-o", "APT::Sandbox::User=root"]  # else apt warns that _apt cannot write to our temp dir
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{packages[0]}-") as tmp:
        progress(f"apt-get download {what}")
        failure = _apt(argv, Path(tmp))
        if failure:  # stale or missing package lists: refresh once and retry
            progress("apt-get update")
            update = _apt(["apt-get", "update", "-qq"], Path(tmp))
            if update:
                raise MeshError(f"`apt-get download {what}` failed ({failure}) and `apt-get update` failed too "
                                f"({update})", "run as root once (the packages are cached), " + hint)
            progress(f"apt-get download {what} (after apt-get update)")
            failure = _apt(argv, Path(tmp))
        if failure:
            raise MeshError(f"`apt-get download {what}` failed: {failure}", hint)
        got = {}
        for name in packages:
            debs = sorted(Path(tmp).glob(f"{name}_*.deb"))
            if not debs:
                raise MeshError(f"`apt-get download {what}` left no .deb of {name}", hint)
            if not debs[0].name.endswith((f"_{arch}.deb", "_all.deb")):
                raise MeshError(f"apt downloaded {debs[0].name}, but the Docker engine runs {arch}", hint)
            got[name] = debs[0]
        for deb in got.values():  # all or nothing: the cache never holds half of a set
            os.replace(deb, cache_dir / deb.name)


def require_apt(cache_dir: Path, package: str, arch: str) -> str:
    """Raise unless apt-get can download `package`; returns the hint for apt's own failures."""
    hint = f"or download Debian {const.DEBIAN_SUITE}'s {package} package for {arch} by hand into {cache_dir}"
    if shutil.which("apt-get") is None:
        raise MeshError(f"the {package} image is built from Debian's {package} package, and apt-get is not "
                        "available to download it", hint)
    return hint


def _apt(argv: list[str], cwd: Path) -> str | None:
    """Run apt; None on success, else its last error line."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode == 0:
        return None
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or [f"exit {proc.returncode}"])[-1]


# Python >= 3.11.4 checks every member itself; older ones rely on the checks in extract_deb.
SAFE_TAR = hasattr(tarfile, "data_filter")


def extract_deb(deb: Path, members: dict[str, str], dest: Path, required: bool = True,
                skip: tuple[str, ...] = ()) -> set[str]:
    """Copy files out of a .deb without dpkg: it is an `ar` archive holding data.tar.{xz,gz,bz2}.

    `members` maps paths in the package (e.g. "usr/bin/promtool", or a folder) to paths under `dest`.
    Relative symbolic links that stay inside `dest` are kept (Debian links shared files between packages);
    others are skipped, as are package paths under `skip`. Returns the members found; with `required`, a missing
    one is an error."""
    data = _ar_member(deb, "data.tar")
    suffix = data[0].rsplit(".", 1)[-1]
    if suffix not in ("tar", "xz", "gz", "bz2"):
        raise MeshError(f"{deb.name} packs its files as {data[0]}, which meshctl cannot read",
                        "use a package from Debian bookworm (data.tar.xz)")
    root = dest.resolve()
    found: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data[1]), mode="r:*") as tar:
        for info in tar.getmembers():
            name = info.name.removeprefix("./")
            if any(name == prefix or name.startswith(prefix.rstrip("/") + "/") for prefix in skip):
                continue
            for src, dst in members.items():
                if name != src and not name.startswith(src.rstrip("/") + "/"):
                    continue
                found.add(src)
                info.name = dst + name[len(src):]
                if ".." in Path(info.name).parts or info.islnk() or not (info.isfile() or info.isdir()
                                                                           or info.issym()):
                    continue
                if info.issym():
                    target = os.path.normpath(root / Path(info.name).parent / info.linkname)
                    if info.linkname.startswith("/") or not target.startswith(str(root) + os.sep):
                        continue
                if SAFE_TAR:
                    tar.extract(info, dest, filter="data")
                else:
                    tar.extract(info, dest)
    missing = sorted(set(members) - found)
    if missing and required:
        raise MeshError(f"{deb.name} holds no {', '.join(missing)}", f"delete {deb} and let meshctl download it again")
    return found


def _ar_member(archive: Path, prefix: str) -> tuple[str, bytes]:
    try:
        blob = archive.read_bytes()
    except OSError as exc:
        raise MeshError(f"cannot read {archive}: {exc.strerror or exc}") from exc
    if not blob.startswith(b"!<arch>\n"):
        raise MeshError(f"{archive} is not a Debian package", "delete it and let meshctl download it again")
    offset = 8
    while offset + 60 <= len(blob):
        header = blob[offset:offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        body = blob[offset + 60:offset + 60 + size]
        if name.startswith(prefix):
            return name, body
        offset += 60 + size + (size % 2)
    raise MeshError(f"{archive} has no {prefix}.* member", "delete it and let meshctl download it again")

"""A real package (issue 18): the wheel holds everything meshctl opens at run time (the sidecar's sources,
the Dockerfiles, the dashboard, the samples, the bench's workload), and an install of it works outside the
source checkout. The wheel is built once per session, from a clean copy of this tree (setuptools' build/
directory keeps modules deleted since, which would ship)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import meshctl
from meshctl.bench import workload
from meshctl.errors import UsageError
from meshctl.runtime import images

ROOT = Path(meshctl.__file__).resolve().parent.parent
SHIPPED = ("meshctl", "sidecar")  # the packages; everything in them ships
NAMED = (  # what the brief names, so a packaging change that drops one fails by name
    "sidecar/__init__.py", "sidecar/supervisor.py", "sidecar/snapshot.py", "sidecar/engine/__init__.py",
    "sidecar/engine/main.py", "sidecar/engine/proxy.py",
    "meshctl/runtime/dockerfiles/proxy.Dockerfile", "meshctl/runtime/dockerfiles/prometheus.Dockerfile",
    "meshctl/bench/Dockerfile", "meshctl/bench/server.py", "meshctl/bench/echo_client.py",
    "meshctl/bench/grpc_server.py", "meshctl/telemetry/dashboard.html",
    "meshctl/samples/bookinfo/compose.yaml", "meshctl/samples/bookinfo/app/Dockerfile",
    "meshctl/samples/bookinfo/app/bookinfo.py", "meshctl/samples/sleep/compose.yaml",
)


def source_files() -> set[str]:
    return {str(p.relative_to(ROOT)) for pkg in SHIPPED for p in (ROOT / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert (ROOT / "pyproject.toml").is_file(), f"the tests run from a source checkout, not {ROOT}"
    src = tmp_path_factory.mktemp("meshctl-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in SHIPPED:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=120, cwd=out)
    assert done.returncode == 0, done.stderr[-2000:]
    [built] = out.glob("meshctl-*.whl")
    return built


@pytest.fixture(scope="session")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed as pip installs a pure-Python wheel: unpacked into a site directory."""
    target = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def test_the_wheel_holds_the_sidecar_dockerfiles_dashboard_and_samples(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [n for n in NAMED if n not in names] == []
    engine = {f for f in source_files() if f.startswith("sidecar/engine/")}
    assert len(engine) > 10 and engine <= names  # every engine module, not just the ones named above
    assert sorted(source_files() - names) == []  # every file of both packages: modules and package data
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "meshctl = meshctl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Run in a separate Python whose meshctl is the unpacked wheel, with its cwd outside the checkout: meshctl
# install's sidecar image step assembles its build context (engine and pip faked), and every other file
# meshctl opens beside its modules is found.
INSTALLED = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace

site, cache = Path(sys.argv[1]), Path(sys.argv[2])
import meshctl, sidecar
from meshctl import const
from meshctl.bench import workload
from meshctl.extras.prometheus import image as prometheus_image
from meshctl.home import MeshSettings
from meshctl.lifecycle import install
from meshctl.resources import SAMPLES, SIDECAR, shipped
from meshctl.runtime import images
from meshctl.telemetry import dashboard

wheelhouse = images.wheelhouse_dir(cache)
wheelhouse.mkdir(parents=True)
(wheelhouse / "h2-4.1.0-py3-none-any.whl").write_bytes(b"")
(wheelhouse / "requirements.txt").write_text("h2\n")  # marks it complete: no pip run
base = SimpleNamespace(id="sha256:base", attrs={})
images.find_image = lambda client, ref: base if ref == const.BASE_IMAGE else None
built = {}

def build_image(client, ref, context, component, build_hash, buildargs, progress):
    built.update(ref=ref, buildargs=buildargs, files=sorted(str(p.relative_to(context)) for p in context.rglob("*")
                                                             if p.is_file()))

images.build_image = build_image
install.ProxyImageStep(SimpleNamespace(docker=lambda: object(), cache_dir=cache), MeshSettings()).apply(print)
print(json.dumps({
    "meshctl": meshctl.__file__, "sidecar": sidecar.__file__, "SIDECAR": str(SIDECAR), "built": built,
    "bench": [str(workload.HERE / name) for name in workload.CONTEXT if (workload.HERE / name).is_file()],
    "prometheus": prometheus_image.DOCKERFILE.is_file(),
    "bookinfo": str(shipped(SAMPLES) / "bookinfo" / "compose.yaml"),
    "dashboard": len(dashboard.page()),
}))
"""


def run_installed(site: Path, tmp_path: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    return subprocess.run([sys.executable, "-c", program, *args], cwd=outside, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)})


def test_an_installed_wheel_assembles_the_sidecar_image_and_finds_its_files(site: Path, tmp_path: Path) -> None:
    done = run_installed(site, tmp_path, INSTALLED, str(site), str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    for key in ("meshctl", "sidecar", "SIDECAR", "bookinfo"):
        assert Path(found[key]).is_relative_to(site), (key, found[key])  # not the checkout's
    assert Path(found["bookinfo"]).is_file()
    built = found["built"]
    assert built["ref"] == meshctl.const.PROXY_IMAGE and built["buildargs"] == {"BASE": meshctl.const.BASE_IMAGE}
    shipped_sidecar = {f for f in source_files() if f.startswith("sidecar/") and f.endswith(".py")}
    assert {f for f in built["files"] if f.startswith("sidecar/")} == shipped_sidecar
    assert {"Dockerfile", "wheelhouse/requirements.txt", "wheelhouse/h2-4.1.0-py3-none-any.whl"} <= set(built["files"])
    assert len(found["bench"]) == len(workload.CONTEXT)
    assert found["prometheus"] is True and found["dashboard"] > 1000


# Every module meshctl imports comes from meshctl itself, the sidecar package, the standard library or a
# distribution its declared dependencies bring: the dev venv (with the test extras) would hide a missing one.
DECLARED = r"""
import importlib, importlib.abc, importlib.metadata as md, pkgutil, sys
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

requires = Parser().parsestr(open(sys.argv[1]).read()).get_all("Requires-Dist") or []
needed, todo = {}, [(Requirement(r), "") for r in requires]
while todo:
    req, parent_extra = todo.pop()
    if req.marker and not req.marker.evaluate({"extra": parent_extra}):
        continue
    name = canonicalize_name(req.name)
    fresh = set(req.extras) - needed.get(name, set())
    if name in needed and not fresh:
        continue
    needed.setdefault(name, set()).update(req.extras)
    for text in md.requires(req.name) or []:
        todo += [(Requirement(text), extra) for extra in ("", *needed[name])]
allowed = {mod for mod, dists in md.packages_distributions().items()
           if any(canonicalize_name(d) in needed for d in dists)} | {"meshctl", "sidecar"}

class Undeclared(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top in sys.modules:
            return None
        raise ModuleNotFoundError(f"{name!r} is in no declared dependency of meshctl", name=name)

sys.meta_path.insert(0, Undeclared())
import meshctl, meshctl.cli
scripts = {"server", "echo_client", "grpc_server"}  # the bench's in-container programs: they serve at import
for mod in pkgutil.walk_packages(meshctl.__path__, "meshctl."):
    if mod.name != "meshctl.__main__" and mod.name.rpartition(".")[2] not in scripts:
        importlib.import_module(mod.name)
print(meshctl.__file__)
"""


def test_meshctl_imports_only_what_its_declared_dependencies_provide(site: Path, tmp_path: Path) -> None:
    [metadata] = site.glob("meshctl-*.dist-info/METADATA")
    done = run_installed(site, tmp_path, DECLARED, str(metadata))
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(done.stdout.strip()).is_relative_to(site)


def test_the_wheelhouse_needs_pip_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))
    with pytest.raises(UsageError, match="built with pip") as caught:
        images.ensure_wheelhouse(tmp_path, lambda _: None)
    assert "ensurepip" in caught.value.one_line()
    assert not any(tmp_path.iterdir())  # stopped before making the wheelhouse directory

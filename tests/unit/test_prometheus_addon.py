"""The prometheus addon without an engine: flag parsing, settings, the generated config (run through a small
model of Prometheus's relabelling), the .deb download and unpacking, the install plan, and the query helper."""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl import const
from meshctl.context import Context
from meshctl.errors import InvalidInput, MeshError, UsageError
from meshctl.extras import parse_addons
from meshctl.extras import prometheus as prom
from meshctl.extras.prometheus import client as prom_client
from meshctl.extras.prometheus import config as prom_config
from meshctl.extras.prometheus import container as prom_container
from meshctl.extras.prometheus import image as prom_image
from meshctl.home import MeshHome, MeshSettings
from meshctl.lifecycle import check
from meshctl.lifecycle import install as installer
from meshctl.runtime import images
from meshctl.status import ExitCode
from tests.unit.cli import meshctl
from tests.unit.fakes import FakeContainer, FakeEngine, FakeImage
from tests.unit.test_cli_errors import NO_ENGINE, one_error_line

# --- --addons and settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "wanted"), [
    ("prometheus", ["prometheus"]), (" Prometheus , prometheus ", ["prometheus"]), ("none", []), ("", []),
    ("NONE", []), ("prometheus,", ["prometheus"]),
])
def test_addons_flag(value: str, wanted: list[str]) -> None:
    assert parse_addons(value) == wanted


def test_an_unknown_addon_names_the_valid_ones() -> None:
    with pytest.raises(UsageError) as err:
        parse_addons("prometheus,grafana")
    assert "'grafana'" in err.value.one_line() and "valid addons: prometheus" in err.value.one_line()
    with pytest.raises(UsageError) as err:
        parse_addons("prometeus")
    assert "did you mean 'prometheus'?" in err.value.one_line()
    with pytest.raises(UsageError, match="none"):
        parse_addons("none,prometheus")


def test_cli_refuses_an_unknown_addon_before_touching_anything(home: Path) -> None:
    done = meshctl("install", "--addons", "grafana", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.USAGE
    line = one_error_line(done.err)
    assert "grafana" in line and "prometheus" in line
    assert not home.exists()


def test_cli_refuses_a_port_that_is_not_one(home: Path) -> None:
    done = meshctl("install", "--addons", "prometheus", "--prometheus-port", "70000", home=home, env=NO_ENGINE)
    assert done.code == ExitCode.USAGE
    assert "--prometheus-port" in one_error_line(done.err)
    assert not home.exists()


def test_addons_are_remembered_until_changed(installed_home: Path) -> None:
    ctx = Context(home=MeshHome(installed_home))
    assert ctx.home.settings().addons == [] and ctx.home.settings().prometheus_port == 9090
    chosen = installer.resolve_settings(ctx, None, None, None, addons=["prometheus"], prometheus_port=19090)
    ctx.home.save_settings(chosen)
    kept = installer.resolve_settings(ctx, None, None, None)  # a plain re-install keeps them
    assert kept.addons == ["prometheus"] and kept.prometheus_port == 19090
    assert installer.resolve_settings(ctx, None, None, None, addons=[]).addons == []


def test_settings_from_before_addons_still_load(tmp_path: Path) -> None:
    old = {"trust_domain": "cluster.local", "network": "meshctl", "network_subnet": None,
           "base_image": const.BASE_IMAGE, "proxy_image": const.PROXY_IMAGE, "cert_ttl": "24h",
           "installed_by": "0.1.0"}
    settings = MeshSettings.from_dict(old, tmp_path / "mesh.yaml")
    assert settings.addons == [] and settings.prometheus_port == const.PROMETHEUS_PORT


@pytest.mark.parametrize("bad", [{"addons": "prometheus"}, {"addons": ["grafana"]}, {"prometheus_port": 0},
                                 {"prometheus_port": "9090"}])
def test_settings_refuse_bad_addon_fields(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(bad))):
        MeshSettings.from_dict(bad, tmp_path / "mesh.yaml")


# --- the generated config --------------------------------------------------------------------------------

def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling, for the actions our config uses (anchored RE2 ~ Python's fullmatch)."""
    out = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(out.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                out[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\")
                                                         .replace("\\{", "\\g<").replace("}", ">"))
        else:
            raise AssertionError(f"the model does not know action {action}")
    return {k: v for k, v in out.items() if not k.startswith("__") or k in ("__address__", "__metrics_path__")}


def discovered(name: str, networks: dict[str, str], ports: list[int], labels: dict[str, str]) -> list[dict[str, str]]:
    """What docker_sd_configs makes of one container: a target per network and exposed TCP port."""
    meta = {"__meta_docker_container_name": f"/{name}"}
    meta |= {f"__meta_docker_container_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in labels.items()}
    targets = []
    for net, ip in networks.items():
        for port in ports or [const.PORT_METRICS]:  # the config's `port` when nothing is exposed
            target = dict(meta, __meta_docker_network_name=net, __meta_docker_network_ip=ip,
                          __address__=f"{ip}:{port}")
            if ports:
                target["__meta_docker_port_private"] = str(port)
            targets.append(target)
    return targets


SIDECAR_LABELS = {const.LABEL_COMPONENT: "sidecar", "io.meshctl.project": "bookinfo", "io.meshctl.service": "ratings-2",
                  "io.meshctl.app": "ratings", "io.meshctl.subset": "v1", "com.docker.compose.project": "bookinfo"}


def sidecar_job(settings: MeshSettings) -> dict[str, Any]:
    parsed = yaml.safe_load(prom_config.render_config(settings))
    return next(job for job in parsed["scrape_configs"] if job["job_name"] == prom_config.JOB_SIDECARS)


def test_config_discovers_sidecars_from_docker_every_5s() -> None:
    job = sidecar_job(MeshSettings())
    assert job["metrics_path"] == "/stats/prometheus"
    sd = job["docker_sd_configs"]
    assert sd == [{"host": "unix:///var/run/docker.sock", "refresh_interval": "5s", "port": 15090,
                   "filters": [{"name": "label", "values": ["io.meshctl.component=sidecar"]}]}]
    parsed = yaml.safe_load(prom_config.render_config(MeshSettings()))
    assert parsed["global"]["scrape_interval"] == "5s"


def test_each_sidecar_is_one_target_on_the_mesh_network_port_15090() -> None:
    rules = sidecar_job(MeshSettings())["relabel_configs"]
    found = discovered("bookinfo_ratings-2-proxy_1", {"bookinfo_default": "172.20.0.5", "meshctl": "172.18.0.9"},
                       [15001, 15006, 15021, 15090], SIDECAR_LABELS)
    kept = [t for t in (relabel(rules, t) for t in found) if t is not None]
    assert kept == [{"__address__": "172.18.0.9:15090", "container": "bookinfo_ratings-2-proxy_1",
                     "instance": "bookinfo_ratings-2-proxy_1", "project": "bookinfo", "service": "ratings-2",
                     "app": "ratings", "version": "v1"}]


def test_a_sidecar_whose_image_exposes_nothing_is_still_scraped_on_15090() -> None:
    rules = sidecar_job(MeshSettings())["relabel_configs"]
    kept = [t for t in (relabel(rules, t) for t in discovered("x-proxy", {"meshctl": "10.0.0.2"}, [], SIDECAR_LABELS))
            if t]
    assert [t["__address__"] for t in kept] == ["10.0.0.2:15090"]


def test_a_custom_network_name_is_matched_literally() -> None:
    rules = sidecar_job(MeshSettings(network="mesh.net"))["relabel_configs"]
    on = discovered("a-proxy", {"mesh.net": "10.0.0.2", "meshxnet": "10.0.1.2"}, [15090], SIDECAR_LABELS)
    assert [t["__address__"] for t in (relabel(rules, t) for t in on) if t] == ["10.0.0.2:15090"]


def test_the_container_follows_config_image_port_and_home(tmp_path: Path) -> None:
    home, other = MeshHome(tmp_path / "a"), MeshHome(tmp_path / "b")
    settings = MeshSettings()
    text = prom_config.render_config(settings)
    base = prom_container.container_hash(home, text, "sha256:1", settings, "/var/run/docker.sock")
    assert base == prom_container.container_hash(home, text, "sha256:1", settings, "/var/run/docker.sock")
    assert base != prom_container.container_hash(home, text, "sha256:2", settings, "/var/run/docker.sock")
    assert base != prom_container.container_hash(other, text, "sha256:1", settings, "/var/run/docker.sock")
    assert base != prom_container.container_hash(home, text, "sha256:1", MeshSettings(prometheus_port=9091),
                                       "/var/run/docker.sock")


def test_in_a_cluster_sidecars_on_every_host_are_found_by_their_alias_on_the_overlay() -> None:
    parsed = yaml.safe_load(prom_config.render_config(MeshSettings(cluster=True, nodes=["node2"])))
    job = next(job for job in parsed["scrape_configs"] if job["job_name"] == prom_config.JOB_SIDECARS)
    assert job == {"job_name": "sidecars", "metrics_path": "/stats/prometheus",
                   "dns_sd_configs": [{"names": ["meshctl-sidecars"], "type": "A", "port": 15090,
                                       "refresh_interval": "5s"}]}
    assert const.SIDECARS_ALIAS == "meshctl-sidecars"  # inject gives every sidecar this alias on the mesh network
    assert [j["job_name"] for j in parsed["scrape_configs"]] == ["sidecars", "prometheus"]
    assert "discovered by the DNS name meshctl-sidecars" in prom_config.render_config(MeshSettings(cluster=True))


def test_in_a_cluster_no_engine_socket_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert prom_container.discovery_socket(MeshSettings(cluster=True)) == ""
    with pytest.raises(UsageError, match="tcp://"):
        prom_container.discovery_socket(MeshSettings())


def test_only_a_unix_socket_can_be_mounted_for_discovery() -> None:
    assert prom_container.engine_socket("unix:///run/user/1000/docker.sock") == "/run/user/1000/docker.sock"
    with pytest.raises(UsageError, match="tcp://"):
        prom_container.engine_socket("tcp://10.0.0.1:2375")


# --- the Debian package ----------------------------------------------------------------------------------

def _tar_xz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def make_deb(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"./control": b"Package: x\n"})),
               ("data.tar.xz", _tar_xz(files, links))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


PROM_FILES = {"./usr/bin/prometheus": b"#!/bin/sh\n", "./usr/bin/promtool": b"#!/bin/sh\n",
              "./usr/share/prometheus/web/templates/graph.html": b"<html/>", "./etc/prometheus/prometheus.yml": b""}


def test_the_binaries_web_ui_and_its_javascript_come_out_of_the_debs(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "prometheus_2.42.0_amd64.deb", PROM_FILES,
                   links={"./usr/share/prometheus/web/static/jquery": "../../../javascript/jquery",
                          "./usr/share/prometheus/web/static/evil": "/etc/shadow",
                          "./usr/share/prometheus/web/static/out": "../../../../../../../etc"})
    js = make_deb(tmp_path / "libjs-jquery_3.6.1_all.deb", {
        "./usr/share/javascript/jquery/jquery.min.js": b"/* jquery */",
        "./usr/share/javascript/moment-timezone/data/huge.json": b"{}",
        "./usr/share/doc/libjs-jquery/copyright": b""})
    out = tmp_path / "ctx"
    images.extract_deb(deb, prom_image.DEB_MEMBERS, out)
    found = images.extract_deb(js, prom_image.UI_MEMBERS, out, required=False, skip=prom_image.UI_SKIP)
    assert found == {"usr/share/javascript"}
    assert (out / "usr/bin/prometheus").read_bytes() == b"#!/bin/sh\n"
    assert (out / "usr/bin/promtool").stat().st_mode & 0o100
    assert (out / "usr/share/prometheus/web/templates/graph.html").is_file()
    # the UI's link into another package resolves inside the image's tree; links leaving it are dropped
    assert (out / "usr/share/prometheus/web/static/jquery/jquery.min.js").read_bytes() == b"/* jquery */"
    assert not (out / "usr/share/prometheus/web/static/evil").is_symlink()
    assert not (out / "usr/share/prometheus/web/static/out").is_symlink()
    assert not (out / "usr/share/javascript/moment-timezone").exists()
    assert not (out / "etc").exists() and not (out / "usr/share/doc").exists()


def test_a_deb_without_promtool_or_not_a_deb_is_one_clear_error(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "prometheus_1_amd64.deb", {"./usr/bin/prometheus": b"x"})
    with pytest.raises(MeshError, match="usr/bin/promtool"):
        images.extract_deb(deb, prom_image.DEB_MEMBERS, tmp_path / "out")
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"<html>proxy error</html>")
    with pytest.raises(MeshError, match="not a Debian package"):
        images.extract_deb(junk, prom_image.DEB_MEMBERS, tmp_path / "out")


FAKE_APT = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *update*) touch "{updated}"; exit 0 ;;
esac
if [ -e "{updated}" ] || [ "{fail_first}" = no ]; then
  for arg in "$@"; do
    case "$arg" in
      download|-*|APT::*) ;;
      prometheus) printf 'deb' > prometheus_2.42.0+ds-5_amd64.deb ;;
      *) printf 'deb' > "${{arg}}_1.0_all.deb" ;;
    esac
  done
  exit 0
fi
echo "E: Unable to locate package prometheus" >&2; exit 100
"""


def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_first: bool) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    script = bin_dir / "apt-get"
    script.write_text(FAKE_APT.format(log=log, updated=tmp_path / "updated", fail_first="yes" if fail_first else "no"))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_the_deb_is_downloaded_once_and_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_apt(tmp_path, monkeypatch, fail_first=False)
    cache = tmp_path / "cache"
    deb = images.ensure_deb(cache, "prometheus", "amd64", lambda _: None)
    assert deb == cache / "prometheus_2.42.0+ds-5_amd64.deb" and deb.is_file()
    assert images.ensure_deb(cache, "prometheus", "amd64", lambda _: None) == deb
    assert len(log.read_text().splitlines()) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary download folder left


def test_a_failed_download_is_retried_once_after_apt_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_apt(tmp_path, monkeypatch, fail_first=True)
    deb = images.ensure_deb(tmp_path / "cache", "prometheus", "amd64", lambda _: None)
    assert deb.is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == 3 and "update" in calls[1]


def test_missing_packages_are_fetched_in_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_apt(tmp_path, monkeypatch, fail_first=False)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "libjs-d3_3.5_all.deb").write_bytes(b"cached")
    debs = images.ensure_debs(cache, ["prometheus", "libjs-d3", "libjs-jquery"], "amd64", lambda _: None)
    assert [d.name for d in debs] == ["prometheus_2.42.0+ds-5_amd64.deb", "libjs-d3_3.5_all.deb",
                                      "libjs-jquery_1.0_all.deb"]
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith("prometheus libjs-jquery")


def test_a_deb_for_another_architecture_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt(tmp_path, monkeypatch, fail_first=False)
    with pytest.raises(MeshError, match="engine runs arm64"):
        images.ensure_deb(tmp_path / "cache", "prometheus", "arm64", lambda _: None)


def test_no_apt_and_no_cached_deb_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MeshError) as err:
        images.ensure_deb(tmp_path / "cache", "prometheus", "amd64", lambda _: None)
    assert "apt-get" in err.value.one_line() and str(tmp_path / "cache") in err.value.one_line()


# --- the install plan, with a fake engine -----------------------------------------------------------------

def addon_image(ref: str, build_hash: str | None = None) -> FakeImage:
    return FakeImage(ref, {const.LABEL_BUILD_HASH: build_hash} if build_hash else {})


def addon_container(labels: dict[str, str], status: str = "running", port: int = 9090) -> FakeContainer:
    """A container named as the add-on's, with its component label (find_container filters on it)."""
    ports = {"9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    return FakeContainer(prom.CONTAINER, {const.LABEL_COMPONENT: prom.COMPONENT, **labels}, status,
                         {"NetworkSettings": {"Ports": ports}})


@pytest.fixture
def prom_ctx(installed_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    return Context(home=MeshHome(installed_home), cache_dir=tmp_path / "cache")


def with_engine(ctx: Context, engine: FakeEngine) -> Context:
    ctx.docker_factory = lambda: engine
    return ctx


def running_container(ctx: Context, settings: MeshSettings, image: FakeImage, **kw: Any) -> FakeContainer:
    text = prom_config.render_config(settings)
    prom_config.config_dir(ctx.home).mkdir(parents=True, exist_ok=True)
    (prom_config.config_dir(ctx.home) / prom_config.CONFIG_FILE).write_text(text)
    wanted = prom_container.container_hash(ctx.home, text, image.id, settings, "/var/run/docker.sock")
    labels = {const.LABEL_COMPONENT: prom.COMPONENT, const.LABEL_HOME: str(ctx.home.root),
              const.LABEL_CONFIG_HASH: wanted}
    return addon_container(labels, **kw)


def addon_steps(ctx: Context, settings: MeshSettings) -> dict[str, str | None]:
    return {s.title: s.pending() for s in installer.plan(ctx, settings) if s.title.startswith("prometheus")}


def test_plan_without_the_addon_has_no_prometheus_steps(prom_ctx: Context) -> None:
    ctx = with_engine(prom_ctx, FakeEngine({}, []))
    assert addon_steps(ctx, ctx.home.settings()) == {}


def test_plan_builds_the_image_and_starts_the_container(prom_ctx: Context, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_apt(tmp_path, monkeypatch, fail_first=False)
    ctx = with_engine(prom_ctx, FakeEngine({const.BASE_IMAGE: addon_image("base")}, []))
    settings = MeshSettings(addons=["prometheus"])
    steps = addon_steps(ctx, settings)
    assert steps["prometheus image"] == "build meshctl/prometheus:0.1.0 from Debian's prometheus package " \
                                        "(apt-get download on this host: 12 packages)"
    assert steps["prometheus"] == "start meshctl-prometheus on http://127.0.0.1:9090"


def test_plan_is_a_no_op_when_image_and_container_match(prom_ctx: Context) -> None:
    settings = MeshSettings(addons=["prometheus"])
    prom_ctx.cache_dir.mkdir(parents=True)
    debs: list[Path | None] = [make_deb(prom_ctx.cache_dir / "prometheus_2.42.0_amd64.deb", PROM_FILES)]
    for name in prom_image.UI_PACKAGES:
        debs.append(make_deb(prom_ctx.cache_dir / f"{name}_1_all.deb", {}))
    engine = FakeEngine({const.BASE_IMAGE: addon_image("base")}, [])
    ctx = with_engine(prom_ctx, engine)
    wanted = prom_image.image_hash(engine, settings, debs)
    image = addon_image("prom", wanted)
    engine.images.found[const.PROMETHEUS_IMAGE] = image
    engine.containers.found.append(running_container(ctx, settings, image))
    assert addon_steps(ctx, settings) == {"prometheus image": None, "prometheus": None}
    engine.containers.found[0].status = "exited"
    assert addon_steps(ctx, settings)["prometheus"] == "start meshctl-prometheus on http://127.0.0.1:9090 " \
                                                       "(it is exited)"
    engine.containers.found[0].status = "running"
    assert addon_steps(ctx, MeshSettings(addons=["prometheus"], prometheus_port=9091))["prometheus"] == \
        "recreate meshctl-prometheus on http://127.0.0.1:9091"
    (prom_config.config_dir(ctx.home) / prom_config.CONFIG_FILE).write_text("# edited by hand\n")
    assert addon_steps(ctx, settings)["prometheus"] == "recreate meshctl-prometheus on http://127.0.0.1:9090"


def test_dropping_the_addon_removes_only_this_homes_container(prom_ctx: Context, tmp_path: Path) -> None:
    ctx = prom_ctx
    image = addon_image("prom")
    mine = running_container(ctx, MeshSettings(addons=["prometheus"]), image)
    engine = FakeEngine({const.PROMETHEUS_IMAGE: image}, [mine])
    with_engine(ctx, engine)
    plan = [s for s in installer.plan(ctx, MeshSettings()) if s.title == "prometheus"]
    assert [s.pending() for s in plan] == ["remove meshctl-prometheus (the prometheus addon is no longer selected)"]
    assert plan[0].apply(lambda _: None) == "removed meshctl-prometheus" and mine.removed
    other = addon_container({const.LABEL_COMPONENT: prom.COMPONENT, const.LABEL_HOME: str(tmp_path / "elsewhere")})
    engine.containers.found = [other]
    assert addon_steps(ctx, MeshSettings()) == {}


def test_url_only_while_the_addon_is_selected_and_its_container_runs(prom_ctx: Context) -> None:
    home = prom_ctx.home
    engine = FakeEngine({}, [addon_container({}, port=19090)])
    assert prom_client.url(home, engine) is None  # not selected in this home
    home.save_settings(MeshSettings(addons=["prometheus"], prometheus_port=19090))
    assert prom_client.url(home, engine) == "http://127.0.0.1:19090"
    engine.containers.found[0].status = "exited"
    assert prom_client.url(home, engine) is None
    assert prom_client.url(MeshHome(home.root.parent / "nothing-here")) is None


def test_check_reports_the_addon_only_when_selected(prom_ctx: Context) -> None:
    assert check._addon_checks(prom_ctx) == []
    prom_ctx.home.save_settings(MeshSettings(addons=["prometheus"]))
    assert check._addon_checks(prom_ctx) == [check._prometheus]
    with_engine(prom_ctx, FakeEngine({}, []))
    result = check._prometheus(prom_ctx)
    assert result.state is check.State.FAIL and "meshctl-prometheus is missing" in result.detail


# --- asking Prometheus ------------------------------------------------------------------------------------

@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/api/v1/query?query=up"):
                status, body = 200, {"status": "success", "data": {"resultType": "vector", "result": [
                    {"metric": {"job": "sidecars", "instance": "a-proxy"}, "value": [1.0, "1"]}]}}
            elif self.path.startswith("/api/v1/targets"):
                status, body = 200, {"status": "success", "data": {"activeTargets": [
                    {"labels": {"job": "sidecars", "instance": "a-proxy"}, "health": "up"},
                    {"labels": {"job": "prometheus", "instance": "localhost:9090"}, "health": "up"}]}}
            else:
                status, body = 400, {"status": "error", "errorType": "bad_data",
                                     "error": "1:5: parse error: unclosed left parenthesis"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_query_and_targets(fake_prometheus: str) -> None:
    assert prom_client.query(fake_prometheus, "up") == [{"metric": {"job": "sidecars", "instance": "a-proxy"},
                                                  "value": [1.0, "1"]}]
    assert [t["labels"]["instance"] for t in prom_client.targets(fake_prometheus)] == ["a-proxy"]
    assert len(prom_client.targets(fake_prometheus, job=None)) == 2


def test_a_bad_query_or_no_server_is_one_clear_error(fake_prometheus: str) -> None:
    with pytest.raises(MeshError, match="unclosed left parenthesis"):
        prom_client.query(fake_prometheus, "sum(")
    with pytest.raises(MeshError, match="does not answer"):
        prom_client.query("http://127.0.0.1:9", "up", timeout=1)

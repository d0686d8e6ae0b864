"""`meshctl inject` keeps the user's file: YAML 1.2 values, comments, anchors; refuses unknown keys;
warns about apps that can undo capture; bounds each sidecar's memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl import const
from meshctl.errors import MeshError
from meshctl.inject.injector import inject
from meshctl.status import ExitCode
from tests.unit.composeyaml import read
from tests.unit.fuzzing import context, make_home, one_line, run_cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("inject-yaml12") / "home")


def mesh(home: Path, tmp_path: Path, text: str) -> tuple[str, Any]:
    source = tmp_path / "compose.yaml"
    source.write_text(text)
    result = inject(context(home), str(source), "shop", "PERMISSIVE", tmp_path)
    return result.text, read(result.text)


# --- values: what YAML 1.1 would have changed ------------------------------------------------------------

TRICKY = """\
services:
  web:
    image: nginx
    environment:
      COUNTRY: NO
      FEATURE: on
      TIME: 1:20
      OLD: off
      ANSWER: yes
      MODE: 0o17
      BIG: 1e3
      WHEN: 2001-12-14
      EMPTY: ""
      QUOTED: 'on'
    labels:
      enabled: on
    command: ["serve", "--flag", "NO"]
"""


def test_yaml_1_1_booleans_and_sexagesimals_stay_strings(home: Path, tmp_path: Path) -> None:
    text, meshed = mesh(home, tmp_path, TRICKY)
    env = meshed["services"]["web"]["environment"]
    assert env == read(TRICKY)["services"]["web"]["environment"]
    assert (env["COUNTRY"], env["FEATURE"], env["TIME"], env["OLD"], env["ANSWER"]) == ("NO", "on", "1:20", "off",
                                                                                         "yes")
    # and the very text is kept, so compose v1 (YAML 1.1) reads the meshed file as it read the original
    for line in ("COUNTRY: NO", "FEATURE: on", "TIME: 1:20", "MODE: 0o17", "BIG: 1e3", 'EMPTY: ""', "QUOTED: 'on'",
                 'command: ["serve", "--flag", "NO"]'):
        assert f"      {line}\n" in text or f"    {line}\n" in text, line
    assert meshed["services"]["web"]["labels"]["enabled"] == "on"


@pytest.mark.parametrize(("key", "raw", "compose_reads"), [
    ("COUNTRY", "NO", "NO"), ("FEATURE", "on", "on"), ("TIME", "1:20", "1:20")])
def test_each_issue_example_in_a_list_environment(home: Path, tmp_path: Path, key: str, raw: str,
                                                  compose_reads: str) -> None:
    _, meshed = mesh(home, tmp_path, f"services:\n  web:\n    image: x\n    environment:\n      {key}: {raw}\n"
                     f"  api:\n    image: y\n    environment:\n      - {key}={raw}\n      - PLAIN: {raw}\n")
    assert meshed["services"]["web"]["environment"] == {key: compose_reads}
    assert meshed["services"]["api"]["environment"] == [f"{key}={raw}", {"PLAIN": compose_reads}]


# --- comments, order, anchors ----------------------------------------------------------------------------

COMMENTED = """\
# the shop's services
x-defaults: &defaults
  restart: always  # keep it up
  logging:
    driver: local

services:
  # front end: the only published port
  web:
    <<: *defaults
    image: nginx:1.25  # pinned for the CVE fix
    environment:
      COUNTRY: NO  # Norway, not false
    ports:
      - "8080:80"  # public

  # the cache
  cache:
    image: redis
    labels:
      mesh.inject: "false"  # not meshed
  # the API
  api:
    image: api
    command: |
      serve --port 80
# end of file
"""


def test_comments_key_order_and_anchors_are_kept(home: Path, tmp_path: Path) -> None:
    text, meshed = mesh(home, tmp_path, COMMENTED)
    lines = text.splitlines()
    for comment in ("# the shop's services", "  restart: always  # keep it up",
                    "    image: nginx:1.25  # pinned for the CVE fix", "      COUNTRY: NO  # Norway, not false",
                    '      - "8080:80"  # public',
                    '      mesh.inject: "false"  # not meshed', "# end of file"):
        assert comment in lines, comment
    # a service's heading comment stays above its pod (sidecar first), not inside the previous service
    for heading, first in (("  # front end: the only published port", "  web-proxy:"), ("  # the cache", "  cache:"),
                           ("  # the API", "  api-proxy:")):
        assert lines[lines.index(heading) + 1] == first, heading
    assert list(meshed["services"]) == ["web-proxy", "web", "cache", "api-proxy", "api"]
    assert list(meshed)[:2] == ["x-defaults", "services"]
    assert "x-defaults: &defaults" in lines and "    <<: *defaults" in lines
    web = meshed["services"]["web"]
    assert (web["restart"], web["logging"]) == ("always", {"driver": "local"})  # the merge still applies
    assert "ports" not in web and meshed["services"]["web-proxy"]["ports"] == ["8080:80"]
    assert meshed["services"]["api"]["command"] == "serve --port 80\n"


def test_merged_key_that_moves_to_the_sidecar_is_written_out(home: Path, tmp_path: Path) -> None:
    """A merge that brings `ports` would give the app its ports back: that service's merge is expanded."""
    text, meshed = mesh(home, tmp_path, "x-net: &net\n  ports: ['80:80']\n  restart: always\n"
                        "services:\n  web:\n    <<: *net\n    image: x\n")
    web = meshed["services"]["web"]
    assert "ports" not in web and web["restart"] == "always"
    assert meshed["services"]["web-proxy"]["ports"] == ["80:80"]
    assert read(text)["x-net"] == {"ports": ["80:80"], "restart": "always"}


def test_a_shared_labels_node_is_not_edited_for_its_other_users(home: Path, tmp_path: Path) -> None:
    _, meshed = mesh(home, tmp_path, "services:\n  web:\n    image: x\n    labels: &l {team: core}\n"
                     "  db:\n    image: y\n    labels: *l\n    depends_on: [web]\n")
    assert meshed["services"]["web"]["labels"]["team"] == "core"
    assert meshed["services"]["web"]["labels"]["io.meshctl.sidecar-hash"] != \
        meshed["services"]["db"]["labels"]["io.meshctl.sidecar-hash"]


def test_list_labels_keep_their_entries(home: Path, tmp_path: Path) -> None:
    _, meshed = mesh(home, tmp_path, "services:\n  web:\n    image: x\n    labels:\n      - team=core\n"
                     "      - enabled=on\n")
    labels = meshed["services"]["web"]["labels"]
    assert labels[:2] == ["team=core", "enabled=on"]
    assert "io.meshctl.injected=true" in labels


def test_the_indentation_of_the_file_is_followed(home: Path, tmp_path: Path) -> None:
    text, _ = mesh(home, tmp_path, "services:\n    web:\n        image: x\n        volumes:\n        - ./a:/a\n")
    assert "\n    web:\n        image: x\n" in text
    assert "\n        volumes:\n        - " in text


# --- keys compose does not know --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("services:\n  web:\n    image: x\n    networkmode: bridge\n",
     "services.web: unknown key 'networkmode' (did you mean 'network_mode'?)"),
    ("services:\n  web:\n    image: x\n    enviroment: {A: b}\n",
     "services.web: unknown key 'enviroment' (did you mean 'environment'?)"),
    ("services:\n  web:\n    image: x\n    Ports: ['80']\n",
     "services.web: unknown key 'Ports' (did you mean 'ports'?)"),
    ("services:\n  web:\n    image: x\n    mesh: {}\n", "services.web: unknown key 'mesh'"),
    ("services:\n  web:\n    image: x\n    1: a\n", "services.web: unknown key '1'"),
    ("service:\n  web: {image: x}\nservices:\n  web:\n    image: x\n",
     "unknown key 'service' (did you mean 'services'?)"),
    ("services:\n  web:\n    image: x\nnetwork:\n  back: {}\n", "unknown key 'network' (did you mean 'networks'?)"),
])
def test_unknown_keys_get_did_you_mean(home: Path, tmp_path: Path, text: str, expected: str) -> None:
    source = tmp_path / "x.yaml"
    source.write_text(text)
    out = tmp_path / "out.yaml"
    ran = run_cli(home, "inject", str(source), "-o", str(out), "-p", "shop")
    assert ran.code == ExitCode.INVALID_INPUT
    assert f"{source}: {expected}" in one_line(ran.err)
    assert not out.exists()


def test_unknown_key_in_an_opted_out_service_is_refused_too(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "x.yaml"
    source.write_text("services:\n  db:\n    image: x\n    labels: {mesh.inject: 'false'}\n    restrat: always\n")
    with pytest.raises(MeshError) as caught:
        inject(context(home), str(source), "shop", "PERMISSIVE", tmp_path)
    assert "services.db: unknown key 'restrat' (did you mean 'restart'?)" in caught.value.one_line()


def test_extension_and_every_spec_key_are_accepted(home: Path, tmp_path: Path) -> None:
    _, meshed = mesh(home, tmp_path, "x-top: 1\nname: shop\nservices:\n  web:\n    image: x\n    x-team: core\n"
                     "    init: true\n    pids_limit: 100\n    stop_signal: SIGINT\n    develop: {}\n")
    assert meshed["services"]["web"]["x-team"] == "core"
    assert meshed["x-top"] == 1


# --- apps that can undo capture --------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "granted"), [
    ("cap_add: [NET_ADMIN]", "NET_ADMIN"), ("cap_add: [net_raw]", "NET_RAW"), ("cap_add: [CAP_NET_ADMIN]", "NET_ADMIN"),
    ("cap_add: [ALL]", "NET_ADMIN, NET_RAW"), ("privileged: true", "privileged: true"),
    ("privileged: 'true'", "privileged: true"),
])
def test_apps_that_can_rewrite_capture_get_a_warning(home: Path, tmp_path: Path, extra: str, granted: str) -> None:
    source = tmp_path / "compose.yaml"
    source.write_text(f"services:\n  web:\n    image: x\n    {extra}\n"
                      "  quiet:\n    image: y\n    cap_add: [SYS_TIME]\n")
    ran = run_cli(home, "inject", str(source), "-o", str(tmp_path / "out.yaml"), "-p", "shop")
    assert ran.code == 0, ran.err
    warnings = [line for line in ran.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, ran.err
    assert "service 'web'" in warnings[0] and granted in warnings[0] and "capture" in warnings[0]
    assert (tmp_path / "out.yaml").is_file()  # inject still proceeds


@pytest.mark.parametrize("extra", ["cap_add: [SYS_TIME]", "privileged: false", "cap_drop: [NET_ADMIN]",
                                   "labels: {mesh.inject: 'false'}\n    cap_add: [NET_ADMIN]"])
def test_no_warning_when_the_app_cannot(home: Path, tmp_path: Path, extra: str) -> None:
    source = tmp_path / "compose.yaml"
    source.write_text(f"services:\n  web:\n    image: x\n    {extra}\n")
    ran = run_cli(home, "inject", str(source), "-o", str(tmp_path / "out.yaml"), "-p", "shop")
    assert ran.code == 0 and "warning:" not in ran.err, ran.err


# --- the sidecar's memory --------------------------------------------------------------------------------

def test_every_sidecar_gets_a_memory_limit_compose_v1_and_v2_apply(home: Path, tmp_path: Path) -> None:
    text, meshed = mesh(home, tmp_path, "services:\n  web:\n    image: x\n    deploy: {replicas: 2}\n"
                        "  api:\n    image: y\n    mem_limit: 2g\n")
    sidecars = [s for n, s in meshed["services"].items() if n.endswith("-proxy")]
    assert len(sidecars) == 3
    assert all(s["mem_limit"] == const.PROXY_MEM_LIMIT for s in sidecars)
    assert meshed["services"]["api"]["mem_limit"] == "2g"  # the app's own limit is the app's
    assert yaml.safe_load(text)["services"]["web-proxy"]["mem_limit"] == const.PROXY_MEM_LIMIT  # YAML 1.1 too

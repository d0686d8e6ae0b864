"""Istio's own YAML, unchanged (issue 17, Done when): every file of istio/istio's samples/bookinfo/networking and
the security tasks' policies (tests/data/istio, each file naming its source) is accepted by `meshctl apply`,
except what cannot apply on compose: a Gateway, and a VirtualService bound to one (the edge is a published
port). Applied as the docs apply them: `kubectl apply -f FILE` after the default destination rules, the
bookinfo policies with `-n` (their `namespace: default` read as the project)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.fuzzing import make_home, one_line, run_cli

DATA = Path(__file__).resolve().parent.parent / "data" / "istio"
NETWORKING = sorted((DATA / "bookinfo-networking").glob("*.yaml"))
SECURITY = sorted((DATA / "security").glob("*.yaml"))
DEFAULT_RULES = DATA / "bookinfo-networking" / "destination-rule-all.yaml"
# A `kubectl apply -n default` of the bookinfo task policies is `meshctl apply -n PROJECT`
NAMESPACED = {"authz-http.yaml": "bookinfo"}
# What compose has no place for, and why (the error must say so)
REFUSED = {("Gateway", "bookinfo-gateway"): "Gateway",
           ("Gateway", "cert-manager-gateway"): "Gateway",
           ("VirtualService", "bookinfo"): "spec.gateways is not supported by meshctl",
           ("VirtualService", "cert-manager"): "spec.gateways is not supported by meshctl"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_home(tmp_path_factory.mktemp("istio-samples") / "home")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_file_names_its_source() -> None:
    assert len(NETWORKING) >= 20 and SECURITY
    for path in NETWORKING + SECURITY:
        head = path.read_text().splitlines()[0]
        assert head.startswith("# ") and ("github.com/istio/" in path.read_text()[:600]
                                         or "istio.io/latest/docs/" in path.read_text()[:600]), path


@pytest.mark.parametrize("path", NETWORKING + SECURITY, ids=lambda p: p.name)
def test_istio_yaml_is_accepted(path: Path, home: Path, tmp_path: Path) -> None:
    assert run_cli(home, "apply", "-f", str(DEFAULT_RULES)).code == 0  # the docs' first step, every time
    namespace = ["-p", NAMESPACED[path.name]] if path.name in NAMESPACED else []
    docs = documents(path)
    if not any((d["kind"], d["metadata"]["name"]) in REFUSED for d in docs):
        done = run_cli(home, "apply", "-f", str(path), *namespace)
        assert done.code == 0, f"{path.name} refused: {done.err}"
        assert len([line for line in done.out.splitlines() if line.strip()]) == len(docs), done.out
        return
    # a file holding a Gateway: each document alone, only the Gateway-bound ones refused, saying why
    refused = {}
    for i, doc in enumerate(docs):
        one = tmp_path / f"{i}.yaml"
        one.write_text(yaml.safe_dump(doc))
        done = run_cli(home, "apply", "-f", str(one), *namespace)
        if done.code != 0:
            refused[(doc["kind"], doc["metadata"]["name"])] = one_line(done.err)
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {k: v for k, v in REFUSED.items() if k in present}
    assert set(refused) == set(expected), refused
    assert all(expected[k] in refused[k] for k in refused), refused

"""Reading a compose file the way docker compose v2 does, for tests that compare what compose would run.

compose-go parses with go-yaml v3: YAML 1.2 (`NO`, `on`, `1:20` are strings), `<<` merge keys honoured,
and a timestamp-looking scalar decoded into an untyped value stays a string.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.resolver import VersionedResolver


class _Constructor(SafeConstructor):
    pass


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)


class _Resolver(VersionedResolver):
    """`=` is a plain string to go-yaml v3 (ruamel keeps YAML 1.1's "value" key even in 1.2)."""

    def add_version_implicit_resolver(self, version: Any, tag: Any, regexp: Any, first: Any) -> None:
        if tag != "tag:yaml.org,2002:value":
            super().add_version_implicit_resolver(version, tag, regexp, first)


def read(text: str) -> Any:
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 2)
    yaml.Constructor = _Constructor
    yaml.Resolver = _Resolver
    return yaml.load(text)

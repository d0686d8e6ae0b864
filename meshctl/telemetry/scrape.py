"""Read a sidecar's Prometheus endpoint and parse the text format (enough of it for our own metrics)."""

from __future__ import annotations

import re
import urllib.error
from dataclasses import dataclass

from meshctl import const
from meshctl.runtime.direct import OPENER

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')




@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if m:
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in LABEL_RE.findall(m.group(2) or "")}
            samples.append(Sample(m.group(1), labels, float(m.group(3))))
    return samples


def scrape(address: str, timeout: float = 3.0) -> list[Sample]:
    url = f"http://{address}:{const.PORT_METRICS}/stats/prometheus"
    try:
        with OPENER.open(url, timeout=timeout) as resp:
            return parse(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return []

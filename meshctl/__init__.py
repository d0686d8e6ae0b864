"""meshctl: a service mesh for docker compose applications on plain Docker."""

__version__ = "0.1.0"

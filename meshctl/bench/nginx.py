"""The bench's C reference: a pair of Debian's nginx proxies doing what a pair of sidecars does.

client -> nginx (client side) ==mutual TLS 1.3, pooled keep-alive==> nginx (server side) -> server, for HTTP on
port 8080; the same for gRPC on port 50051 (h2c in, `grpc_pass grpcs://` between the two, `grpc_pass grpc://` to
the gRPC server), and for raw TCP on port 9000 through nginx's stream module (one TLS connection per client
connection, as the mesh's L4 path has). Each proxy runs one worker, as a sidecar runs one process.

The certificates are throwaway ones shaped like the mesh's (ECDSA P-256, a SPIFFE URI SAN), issued by a CA made
for this run only. nginx cannot check a URI SAN, so the client side verifies the server's chain and a DNS SAN
(`proxy_ssl_name`), and the server side verifies the client's chain (`ssl_verify_client on`): both ends are
authenticated, by the CA rather than by SPIFFE identity.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile
from dataclasses import dataclass

from meshctl.bench.grpc_server import PORT as GRPC_PORT
from meshctl.pki.ca import RootCA, create_root
from meshctl.pki.workload import issue
from sidecar.contract import spiffe_id

CONF_DIR = "/etc/meshbench"
HTTP_PORT = 8080  # what the caller dials on the client-side proxy, as on the server itself
ECHO_PORT = 9000
TLS_HTTP_PORT = 8443  # between the two proxies
TLS_ECHO_PORT = 9443
TLS_GRPC_PORT = 50443
MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian builds the stream module as a dynamic module
KEEPALIVE = 32  # idle upstream connections kept per worker: more than the bench's highest concurrency
# nginx's gRPC proxy carries one call per upstream connection (no multiplexing): keep more idle connections than
# the bench's concurrent calls (16 connections x 16 streams), so none is set up again during a load
GRPC_KEEPALIVE = 512
TRUST_DOMAIN = "meshbench.local"
NAMESPACE = "meshbench"
PUBLIC = 0o644
SECRET = 0o600  # private keys: readable by the master process (root) only; it loads them before dropping to nobody


def argv() -> list[str]:
    """The container's command: nginx in the foreground, errors to stderr (docker logs), our config only."""
    return ["nginx", "-e", "stderr", "-c", f"{CONF_DIR}/nginx.conf", "-g", "daemon off;"]


# --- certificates ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Certs:
    ca_pem: bytes
    client: Leaf
    server: Leaf
    server_name: str  # the server leaf's DNS SAN, which the client side checks


def _leaf(root: RootCA, identity: str, dns: list[str], now: dt.datetime) -> Leaf:
    """A workload certificate as the mesh issues them, plus DNS names for nginx to check."""
    issued = issue(root, identity, now, dt.timedelta(days=1), dns_names=dns)
    return Leaf(issued.cert_pem(), issued.key_pem())


def make_certs(server_name: str, now: dt.datetime) -> Certs:
    """A CA for this run only (never the mesh's: its key stays in the mesh home) and the two proxies' leaves."""
    root = create_root(TRUST_DOMAIN, now, days=1)
    client = _leaf(root, spiffe_id(TRUST_DOMAIN, NAMESPACE, "client"), [], now)
    server = _leaf(root, spiffe_id(TRUST_DOMAIN, NAMESPACE, "server"), [server_name], now)
    return Certs(root.cert_pem(), client, server, server_name)


# --- configuration --------------------------------------------------------------------------------------

# nginx makes these at start; its built-in ones are under /var/lib/nginx, which the image does not have
TEMP = "".join(f"  {kind}_temp_path /tmp/nginx-{kind};\n"
               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def _main(http: str, stream: str) -> str:
    return f"""load_module {MODULE};
user nobody nogroup;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 2048; }}  # gRPC: a connection per call, both ways
http {{
  access_log off;
{TEMP}  default_type application/octet-stream;
  keepalive_requests 1000000;  # wrk's connections stay open for the whole load, as they do direct
  proxy_http_version 1.1;
  proxy_set_header Connection "";  # keep the upstream connection open whatever the caller asked
  proxy_buffer_size 16k;
  proxy_buffers 8 16k;  # a 64 KB response fits in memory ...
  proxy_max_temp_file_size 0;  # ... and never goes to disk
{http}}}
stream {{
{stream}}}
"""


def _lines(pairs: list[tuple[str, str]], indent: str, prefix: str = "") -> str:
    return "".join(f"{indent}{prefix}{key} {value};\n" for key, value in pairs)


def client_conf(server_proxy: str, server_name: str) -> str:
    """The caller's side: plaintext in, mutual TLS out to `server_proxy`, verified against the CA and
    `server_name` (a DNS SAN of the server's certificate)."""
    tls = [("ssl_certificate", f"{CONF_DIR}/cert.pem"), ("ssl_certificate_key", f"{CONF_DIR}/key.pem"),
           ("ssl_trusted_certificate", f"{CONF_DIR}/ca.pem"), ("ssl_verify", "on"), ("ssl_verify_depth", "1"),
           ("ssl_name", server_name), ("ssl_protocols", "TLSv1.3"), ("ssl_session_reuse", "on")]
    http = f"""  upstream mtls_http {{
    server {server_proxy}:{TLS_HTTP_PORT};
    keepalive {KEEPALIVE};
    keepalive_requests 1000000;
  }}
  server {{
    listen {HTTP_PORT} backlog=1024;
    location / {{
      proxy_pass https://mtls_http;
{_lines(tls, "      ", "proxy_")}    }}
  }}
  upstream mtls_grpc {{
    server {server_proxy}:{TLS_GRPC_PORT};
    keepalive {GRPC_KEEPALIVE};
    keepalive_requests 1000000;
  }}
  server {{
    listen {GRPC_PORT} http2 backlog=1024;  # h2c: HTTP/2 with prior knowledge, as gRPC clients speak it
    location / {{
      grpc_pass grpcs://mtls_grpc;
{_lines(tls, "      ", "grpc_")}    }}
  }}
"""
    stream = f"""  server {{
    listen {ECHO_PORT} backlog=1024;
    proxy_pass {server_proxy}:{TLS_ECHO_PORT};
    proxy_ssl on;
{_lines(tls, "    ", "proxy_")}  }}
"""
    return _main(http, stream)


def server_conf(app: str, grpc_app: str) -> str:
    """The server's side: mutual TLS in (a client certificate from the CA is required), plaintext to `app` (HTTP,
    TCP) and `grpc_app` (h2c)."""
    tls = _lines([("ssl_certificate", f"{CONF_DIR}/cert.pem"), ("ssl_certificate_key", f"{CONF_DIR}/key.pem"),
                  ("ssl_client_certificate", f"{CONF_DIR}/ca.pem"), ("ssl_verify_client", "on"),
                  ("ssl_verify_depth", "1"), ("ssl_protocols", "TLSv1.3")], "    ")
    http = f"""  upstream app_http {{
    server {app}:{HTTP_PORT};
    keepalive {KEEPALIVE};
    keepalive_requests 1000000;
  }}
  server {{
    listen {TLS_HTTP_PORT} ssl backlog=1024;
{tls}    location / {{
      proxy_pass http://app_http;
    }}
  }}
  upstream app_grpc {{
    server {grpc_app}:{GRPC_PORT};
    keepalive {GRPC_KEEPALIVE};
    keepalive_requests 1000000;
  }}
  server {{
    listen {TLS_GRPC_PORT} ssl http2 backlog=1024;
{tls}    location / {{
      grpc_pass grpc://app_grpc;
    }}
  }}
"""
    stream = f"""  server {{
    listen {TLS_ECHO_PORT} ssl backlog=1024;
{tls}    proxy_pass {app}:{ECHO_PORT};
  }}
"""
    return _main(http, stream)


def files(conf: str, ca_pem: bytes, leaf: Leaf) -> dict[str, tuple[bytes, int]]:
    """One proxy's files under CONF_DIR: its config, the CA, and its own certificate and key (0600)."""
    return {"nginx.conf": (conf.encode(), PUBLIC), "ca.pem": (ca_pem, PUBLIC), "cert.pem": (leaf.cert_pem, PUBLIC),
            "key.pem": (leaf.key_pem, SECRET)}


def archive(contents: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar of CONF_DIR for `put_archive`: the files never touch the host's disk."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        folder = tarfile.TarInfo(CONF_DIR.strip("/"))
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, (data, mode) in sorted(contents.items()):
            info = tarfile.TarInfo(f"{CONF_DIR.strip('/')}/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()

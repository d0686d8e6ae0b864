"""The bench's gRPC upstream: Debian's nginx speaking h2c (HTTP/2 with prior knowledge) on port 50051, answering
every unary call to /bench.Echo/Call with one fixed gRPC message (5-byte prefix, a protobuf `bytes` field) and
the trailer `grpc-status: 0`. In C, so it is not the bottleneck of any mode.

Like a real gRPC server it reads the whole request before it answers: `mirror_request_body` (with a mirror to
an internal 204) makes nginx read the body first. Answering early would be valid HTTP/2, but nginx then resets
the finished stream (RST_STREAM NO_ERROR), and nginx's own grpc_pass fails the next call on that connection
("upstream sent frame for unknown stream"). nginx's static module refuses POST (405); `error_page 405 =200`
serves the message file instead, as a GET. Run as a script it writes its files under /tmp and becomes nginx;
the bench image also runs it once at build time (`--request FILE`) to write the body h2load sends.
Standard library only: it runs in the bench image, outside meshctl's package.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

PORT = 50051
SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Call"
PAYLOAD = 1024  # bytes in the message's one field, each way
ROOT = Path("/tmp/meshbench-grpc")


def message(payload: int = PAYLOAD) -> bytes:
    """One gRPC message: flag 0 (uncompressed), 4-byte big-endian length, then protobuf field 1 (`bytes`)."""
    body = b"x" * payload
    size, varint = len(body), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            break
    proto = b"\x0a" + bytes(varint) + body
    return b"\x00" + struct.pack(">I", len(proto)) + proto


def conf(root: Path = ROOT, port: int = PORT) -> str:
    temp = "".join(f"  {kind}_temp_path /tmp/nginx-grpc-{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""user nobody nogroup;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}  keepalive_requests 1000000;  # h2 connections stay open for the whole load
  server_tokens off;
  etag off;
  open_file_cache max=16;
  types {{ }}
  default_type application/grpc;
  server {{
    listen {port} http2 backlog=1024;
    root {root};
    location = {METHOD} {{
      alias {root}/answer;  # the static module answers POST with 405 only for a file that exists
      mirror /drained;
      mirror_request_body on;  # the whole request is read before the answer
      error_page 405 =200 /answer;  # POST to a static file: the answer is served instead
    }}
    location = /drained {{
      internal;
      return 204;
    }}
    location = /answer {{
      internal;
      add_trailer grpc-status 0 always;
    }}
    location / {{
      return 404;
    }}
  }}
}}
"""


def write(root: Path = ROOT) -> Path:
    """The answer file and nginx's config under `root`; returns the config's path."""
    root.mkdir(parents=True, exist_ok=True)
    answer = root / "answer"
    answer.write_bytes(message())
    for path in (root, answer):
        path.chmod(0o755 if path.is_dir() else 0o644)  # nginx's worker runs as nobody
    config = root / "nginx.conf"
    config.write_text(conf(root))
    return config


def main(argv: list[str]) -> None:
    if argv[:1] == ["--request"] and len(argv) == 2:
        Path(argv[1]).write_bytes(message())
        return
    config = write()
    os.execvp("nginx", ["nginx", "-e", "stderr", "-c", str(config), "-g", "daemon off;"])


if __name__ == "__main__":
    main(sys.argv[1:])

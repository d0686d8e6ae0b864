"""The sidecar's new engine for HTTP/1.1 and TCP (issue 15): asyncio Protocols on uvloop, llhttp via httptools.

Not wired into addons.proxy yet; it imports neither meshctl nor mitmproxy, and stays that way.

What each module owns
- http1.py   Reading and writing HTTP/1.1. RequestReader/ResponseReader are fed bytes and call a sink with a
             typed head (RequestHead/ResponseHead: method, normalised target, version, headers as (bytes,
             bytes), keep_alive as llhttp said inside its callback, body framing), then body pieces, then the
             end. Limits while reading (addons.framing's: 8 KiB line -> 414, 68 KiB head or 100 fields -> 431,
             counted on bytes fed to llhttp, which is what bounds its field buffer); the checks of
             addons.normalize (fields, Host, path); smuggling defences (CL+TE, odd transfer codings, bad chunk
             sizes, bare CR/LF: 400). ProtocolError is its only error. encode_* build a message in one bytes.
- pool.py    Upstream connections keyed by (address, expected SPIFFE ID): keep-alive, a health check on reuse
             (closing, or anything arrived while idle -> discarded), one idle-eviction timer, per-key and
             total caps (overflow is immediate, Envoy's UO). The identity is checked right after the handshake,
             before a request byte is written (tls.identity_problem: exactly one URI SAN, equal to it).
- tls.py     ssl.SSLContexts for both sides from cert/key/bundle (addons.mtls's policy without pyOpenSSL).
- relay.py   A byte relay between two transports with backpressure (write-buffer water marks ->
             pause_reading on the other side) and half-close; for TCP and WebSocket after a 101.
- proxy.py   The forward path: Listener (cap per listener -> 503 and close; mallopt at start), Downstream
             (a client connection: pipelined requests in turn, per-read write coalescing, a head timeout
             against slowloris), Exchange (one request upstream over a pooled connection, the response
             streamed back, backpressure both ways, one retry of a body-less request on a pooled connection
             found dead, 101 -> relay). `decide(head) -> Route | Response` is the one hook, pure.

What the lead still has to do to wire it in
- Listeners on 15001 (outbound) and 15006 (inbound): read SO_ORIGINAL_DST per accepted socket (getsockopt
  SOL_IP 80 on transport.get_extra_info("socket")) and put it on the typed context (the Route's default);
  the proxy uid stays exempt from capture as today. Sniff TLS / HTTP / other per port (server-first ports
  connect upstream at once and use relay.py: note that uvloop undoes a pause_reading() made inside
  connection_made; pause from loop.call_soon instead).
- Inbound mTLS per port (STRICT / PERMISSIVE / DISABLE): server_context on the listener, and the caller's
  SPIFFE ID (tls.peer_uris of the ssl_object) on the request context for authz; decide() today gets only the
  RequestHead, so widen it to a context object (head + peer identity + original destination + listener).
- The addons as hooks on that context (routing, resilience, authz, JWT, telemetry, tracing), compiled
  once from the snapshot; Route gets the header operations, timeouts and retries they need (the Exchange
  has the seams: _fail/_broken for flags UF/UC/UO, flush points for timing); DestinationRule
  connectionPool -> Pool caps; outlier detection -> a per-endpoint state the decision reads.
- Telemetry (access log with Envoy's flags, metrics, traces), the admin endpoints, certificate reload
  (Pool takes a callable for its SSLContext: new connections get the new certificate), live snapshot
  reload, drain. Trailers are dropped (HTTP/1.1 apps rarely send them); h2c/gRPC stays L4 as today.

Measured (tests/unit/engine/bench_loopback.py, 3 s per cell, 1 KB keep-alive, a process per hop on uvloop,
2 cores, taken with a load average of ~10 from other sessions on the machine, so low and noisy):
    mode       load   req/s  ratio  added p50
    direct     c1     19605  1.00x
    plaintext  c1      2895  0.15x  +0.13 ms
    mtls pair  c1      1007  0.05x  +0.38 ms
    direct     c16    21621  1.00x
    plaintext  c16     4606  0.21x  +1.60 ms
    mtls pair  c16     1531  0.07x  +4.82 ms
"direct" is a canned-response origin (~20k req/s), much faster than the bench's server, so these ratios
are not comparable with issue 15's table; rerun on a quiet machine before drawing conclusions.
"""

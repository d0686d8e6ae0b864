"""The sidecar's new engine for HTTP/1.1 and TCP (issue 15): asyncio Protocols on uvloop, llhttp via httptools.

It is the sidecar's proxy (sidecar.main runs it); it imports neither meshctl nor mitmproxy, and stays that way.

What each module owns
- http1.py   Reading and writing HTTP/1.1. RequestReader/ResponseReader are fed bytes and call a sink with a
             typed head (RequestHead/ResponseHead: method, normalised target, version, headers as (bytes,
             bytes), keep_alive as llhttp said inside its callback, body framing), then body pieces, then the
             end. Limits while reading (8 KiB line -> 414, 68 KiB head or 100 fields -> 431,
             counted on bytes fed to llhttp, which is what bounds its field buffer); the checks of
             sidecar.normalize (fields, Host, path); smuggling defences (CL+TE, odd transfer codings, bad chunk
             sizes, bare CR/LF: 400). ProtocolError is its only error. encode_* build a message in one bytes.
- pool.py    Upstream connections keyed by (address, expected SPIFFE ID): keep-alive, a health check on reuse
             (closing, or anything arrived while idle -> discarded), one idle-eviction timer, per-key and
             total caps (overflow is immediate, Envoy's UO). The identity is checked right after the handshake,
             before a request byte is written (tls.identity_problem: exactly one URI SAN, equal to it).
- tls.py     ssl.SSLContexts for both sides from cert/key/bundle, and the SPIFFE identity check.
- relay.py   A byte relay between two transports with backpressure (write-buffer water marks ->
             pause_reading on the other side) and half-close; for TCP and WebSocket after a 101.
- plan.py    What a captured connection becomes, pure: decide(ConnectionInfo) -> L7Http | L4Tcp | Passthrough |
             TerminateTls | Refuse (STRICT/PERMISSIVE/DISABLE per port, the edge, the app's own TLS, the
             proxy's own ports) and server-first protocols: a port declared "tcp" (snapshot
             workloads[].port_protocols) or well known (3306, 25, 587, 21, 110, 143, 22; 5432, 6379, 11211,
             27017) is decided without waiting; any other waits SNIFF_TIMEOUT_S (200 ms) for the client, then TCP.
- listeners.py  The capture listeners (15001/15006): accept, SO_ORIGINAL_DST, peek the first bytes (MSG_PEEK,
             so our TLS server still reads the ClientHello), decide, carry out (L7 -> proxy.Downstream with a
             per-connection decide; L4 -> l4.py; inbound TLS terminated, then decided again inside).
- l4.py      The L4 path: one mTLS connection per app connection offering only ALPN "meshctl-l4" (the far
             side relays at once), the identity checked before a byte is written, relay.py between.
- proxy.py   The forward path: Listener (cap per listener -> 503 and close; mallopt at start), Downstream
             (a client connection: pipelined requests in turn, per-read write coalescing, a head timeout
             against slowloris), Exchange (one request upstream over a pooled connection, the response
             streamed back, backpressure both ways, one retry of a body-less request on a pooled connection
             found dead, 101 -> relay), Buffered (a small request read whole for the router's Routed
             decision). `decide(call) -> Route | Response | Routed` is bound per connection by main.py.
- call.py    The typed request context the hooks read and write (Call; Headers, a view over the head's fields).
- authorize.py, route.py, trace.py, observe.py   The hooks: AuthorizationPolicy and JWT (inbound), routing
             (outbound: rules, faults, retries, timeouts, mirroring, balancing, outliers, connection pools),
             the span, and metrics and access logs. Their decisions are sidecar.rbac, sidecar.routes,
             sidecar.policy, sidecar.jwt and sidecar.spans/meters: pure code, shared, tested without sockets.
- client.py  One buffered exchange over a pooled connection: what the router repeats, bounds and copies.
- certs.py   The workload certificate as TLS contexts, reloaded when its files change (new connections only).
- main.py    The proxy process: listeners, hooks, admin endpoints, reloads, drain.

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

"""The resource kinds meshctl understands, in Istio's shape, with the fields that make sense on compose.

The same YAML written for Istio applies unchanged for these fields; any other field is named in an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshctl.config.schema import Schema
from sidecar.contract import MTLS_MODES

STRING_MATCH: Schema = {"exact": "string", "prefix": "string", "regex": "regex"}
PERCENT: Schema = {"value": "percent"}
HEADER_VALUES: Schema = {"*": "header-value", "*key": "header"}
HEADER_OPS: Schema = {"set": HEADER_VALUES, "add": HEADER_VALUES, "remove": ["header"]}
DESTINATION: Schema = {"host": "name", "subset": "name", "port": {"number": "port"}}

HTTP_ROUTE: Schema = {
    "name": "string",
    "match": [{"name": "string", "uri": STRING_MATCH, "method": STRING_MATCH,
               "headers": {"*": STRING_MATCH, "*key": "header"}, "queryParams": {"*": STRING_MATCH},
               "ignoreUriCase": "bool", "port": "port"}],
    "route": [{"destination": DESTINATION, "weight": "percent", "headers": {"request": HEADER_OPS,
                                                                          "response": HEADER_OPS}}],
    "timeout": "duration",
    "retries": {"attempts": "int", "perTryTimeout": "duration", "retryOn": "retry-on"},
    "fault": {"delay": {"fixedDelay": "duration", "percentage": PERCENT},
              "abort": {"httpStatus": "status", "grpcStatus": "grpc-status", "percentage": PERCENT}},
    "mirror": DESTINATION,
    "mirrorPercentage": PERCENT,
    "headers": {"request": HEADER_OPS, "response": HEADER_OPS},
}

TRAFFIC_POLICY: Schema = {
    "loadBalancer": {"simple": "enum:ROUND_ROBIN|LEAST_REQUEST|RANDOM|PASSTHROUGH",
                     "consistentHash": {"httpHeaderName": "string",
                                        "httpCookie": {"name": "string", "ttl": "duration", "path": "string"},
                                        "useSourceIp": "bool"}},
    "connectionPool": {"tcp": {"maxConnections": "int", "connectTimeout": "duration"},
                       "http": {"http1MaxPendingRequests": "int", "maxRequestsPerConnection": "int",
                                "maxRetries": "int", "idleTimeout": "duration"}},
    "outlierDetection": {"consecutive5xxErrors": "int", "consecutiveGatewayErrors": "int", "interval": "duration",
                         "baseEjectionTime": "duration", "maxEjectionPercent": "percent"},
}
# ISTIO_MUTUAL is what every meshed call does; DISABLE sends plain text; SIMPLE/MUTUAL originate TLS (egress).
CLIENT_TLS: Schema = {"mode": "enum:DISABLE|SIMPLE|MUTUAL|ISTIO_MUTUAL", "sni": "string", "caCertificates": "string",
                      "insecureSkipVerify": "bool"}
TRAFFIC_POLICY |= {"tls": CLIENT_TLS, "portLevelSettings": [{"port": {"number": "port"}, "tls": CLIENT_TLS}]}
PER_PORT = "per-port settings carry only `tls`; set this for the whole host in trafficPolicy"

NOT_ON_COMPOSE = "compose has no gateways or meshes beyond this one"
LABELS: Schema = {"*": "string"}  # any compose label of the service: selection fails closed on one it lacks
SELECTOR: Schema = {"matchLabels": LABELS}
MTLS_MODE = "enum:" + "|".join((*MTLS_MODES, "UNSET"))  # UNSET: inherit (Istio's)
STRINGS: list[str] = ["string"]
SOURCE: Schema = {k: STRINGS for k in ("principals", "notPrincipals", "namespaces", "notNamespaces",
                                        "requestPrincipals", "notRequestPrincipals", "serviceAccounts",
                                        "notServiceAccounts")}
SOURCE |= {k: ["cidr"] for k in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")}
OPERATION: Schema = {k: STRINGS for k in ("methods", "notMethods", "paths", "notPaths", "ports", "notPorts",
                                           "hosts", "notHosts")}
AUTHZ_RULE: Schema = {"from": [{"source": SOURCE}], "to": [{"operation": OPERATION}],
                      "when": [{"key": "string", "values": STRINGS, "notValues": STRINGS}]}
JWT_RULE: Schema = {"issuer": "string", "audiences": STRINGS, "jwks": "string", "jwksUri": "string",
                    "fromHeaders": [{"name": "string", "prefix": "string"}], "fromParams": STRINGS,
                    "fromCookies": STRINGS, "forwardOriginalToken": "bool", "outputPayloadToHeader": "string",
                    "outputClaimToHeaders": [{"header": "string", "claim": "string"}]}


@dataclass(frozen=True)
class Kind:
    name: str  # VirtualService
    group: str  # networking.istio.io
    versions: tuple[str, ...]
    aliases: tuple[str, ...]
    spec: Schema
    unsupported: dict[str, str] = field(default_factory=dict)

    @property
    def plural(self) -> str:
        name = self.name.lower()
        return name[:-1] + "ies" if name.endswith("y") else name + ("es" if name.endswith("s") else "s")

    @property
    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" for v in self.versions)


KINDS: tuple[Kind, ...] = (
    Kind("VirtualService", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), ("virtualservice", "vs"),
         {"hosts": ["name"], "http": [HTTP_ROUTE]},
         {"gateways": NOT_ON_COMPOSE, "exportTo": NOT_ON_COMPOSE, "tls": "meshctl routes HTTP; TLS routing is L4",
          "tcp": "TCP routing is not supported yet; TCP gets mutual TLS passthrough"}),
    Kind("DestinationRule", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), ("destinationrule", "dr"),
         {"host": "name", "trafficPolicy": TRAFFIC_POLICY,
          "subsets": [{"name": "name", "labels": LABELS, "trafficPolicy": TRAFFIC_POLICY}]},
         {"exportTo": NOT_ON_COMPOSE, "workloadSelector": "select the destination with `host`",
          "loadBalancer": PER_PORT, "connectionPool": PER_PORT, "outlierDetection": PER_PORT}),
)
SECURITY = (
    Kind("PeerAuthentication", "security.istio.io", ("v1", "v1beta1"), ("peerauthentication", "pa"),
         {"selector": SELECTOR, "mtls": {"mode": MTLS_MODE}, "portLevelMtls": {"*": {"mode": MTLS_MODE}}}),
    Kind("AuthorizationPolicy", "security.istio.io", ("v1", "v1beta1"), ("authorizationpolicy", "ap"),
         {"selector": SELECTOR, "action": "enum:ALLOW|DENY|AUDIT", "rules": [AUTHZ_RULE]},
         {"provider": "CUSTOM authorization providers are not supported", "targetRef": "select with `selector`",
          "trustDomains": "Istio's AuthorizationPolicy has no such field; to match any trust domain write "
                          "principals: ['*/ns/NS/sa/ACCOUNT'], or serviceAccounts: ['NS/ACCOUNT']",
          "targetRefs": "select with `selector`"}),
    Kind("RequestAuthentication", "security.istio.io", ("v1", "v1beta1"), ("requestauthentication", "ra"),
         {"selector": SELECTOR, "jwtRules": [JWT_RULE]},
         {"targetRef": "select with `selector`", "targetRefs": "select with `selector`"}),
)
# Istio reads a provider's address from MeshConfig.extensionProviders; compose has no MeshConfig, so the
# provider names its endpoint here. `meshctl telemetry set` writes this resource.
TRACING: Schema = {"randomSamplingPercentage": "percent", "disableSpanReporting": "bool",
                   "providers": [{"name": "enum:zipkin|opentelemetry", "endpoint": "url"}]}
OBSERVABILITY = (
    Kind("Telemetry", "telemetry.istio.io", ("v1", "v1alpha1"), ("telemetry",),
         {"selector": SELECTOR, "tracing": [TRACING]},
         {"metrics": "metrics are always on, with Istio's names and labels",
          "accessLogging": "access logs are always on: `meshctl logs`", "targetRef": "select with `selector`",
          "targetRefs": "select with `selector`"}),
    # meshctl's own: Istio has no SLO resource (Sloth and Pyrra add one on Prometheus). `meshctl slo set` writes it.
    Kind("ServiceLevelObjective", "meshctl.io", ("v1",), ("servicelevelobjective", "slo"),
         {"service": "name", "availability": "percent", "window": "duration",
          "latency": {"percentile": "percent", "threshold": "duration"}}),
)
# External hosts the mesh's apps call (issue 17). Meshed services are the compose services themselves, so only
# MESH_EXTERNAL entries are accepted (resources.py refuses MESH_INTERNAL with its reason).
SE_PROTOCOLS = "enum:HTTP|HTTPS|HTTP2|GRPC|TLS|TCP|MONGO|MYSQL|REDIS"
EGRESS = (
    Kind("ServiceEntry", "networking.istio.io", ("v1", "v1beta1", "v1alpha3"), ("serviceentry", "se"),
         {"hosts": ["string"], "location": "enum:MESH_EXTERNAL|MESH_INTERNAL",
          "ports": [{"number": "port", "name": "string", "protocol": SE_PROTOCOLS, "targetPort": "port"}],
          "resolution": "enum:DNS|DNS_ROUND_ROBIN|NONE|STATIC", "endpoints": [{"address": "string"}]},
         {"exportTo": NOT_ON_COMPOSE, "addresses": "the sidecar matches a host by the addresses it resolves to; "
          "list the host names (or endpoints) instead of virtual IPs",
          "workloadSelector": "compose services are in the mesh already; a ServiceEntry names external hosts",
          "subjectAltNames": "name the certificate to check in the DestinationRule's tls.sni",
          "ports": "endpoints[].ports is not supported: set the port's targetPort",
          "labels": "endpoints carry no labels: subsets of external hosts are not supported",
          "network": NOT_ON_COMPOSE, "locality": NOT_ON_COMPOSE, "weight": "endpoints are used in turn",
          "serviceAccount": "external hosts have no mesh identity"}),
)
KINDS = KINDS + SECURITY + OBSERVABILITY + EGRESS
BY_ALIAS = {alias: k for k in KINDS for alias in (k.name.lower(), k.plural, *k.aliases)}


# Istio kinds with no meaning on compose, each with why (refused by name, never "unknown").
REFUSED_KINDS = {
    "Gateway": "the edge of a compose mesh is a published port (`ports:`); there are no gateway proxies",
    "Sidecar": "every sidecar already reaches exactly its own project's services",
    "EnvoyFilter": "meshctl's sidecar is not Envoy",
    "WorkloadEntry": "workloads are compose services; an external host is a ServiceEntry",
    "WorkloadGroup": "workloads are compose services",
    "ProxyConfig": "proxy settings are mesh-wide, chosen with `meshctl install`",
    "WasmPlugin": "meshctl's sidecar runs no Wasm",
    "HTTPRoute": "Kubernetes Gateway API routes need a cluster; route with a VirtualService",
    "GRPCRoute": "Kubernetes Gateway API routes need a cluster; route with a VirtualService",
    "TCPRoute": "Kubernetes Gateway API routes need a cluster",
    "TLSRoute": "Kubernetes Gateway API routes need a cluster",
}


def refused_kind(name: str) -> str | None:
    """Why an Istio (or Gateway API) kind does not apply on compose; None for a kind that is not one of them."""
    return next((why for kind, why in REFUSED_KINDS.items() if kind.lower() == name.lower()), None)


def find_kind(name: str) -> Kind | None:
    return BY_ALIAS.get(name.lower().split(".", 1)[0])

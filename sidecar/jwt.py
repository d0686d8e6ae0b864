"""RequestAuthentication: validate JWTs (issuer, audiences, signature from a JWKS, expiry) with PyJWT.

A request without a token passes unauthenticated (Istio's rule: an AuthorizationPolicy decides whether
that is enough); a request with a token that fails any check is refused with 401, and so is a request
carrying more than one token (the app must never see a second, unchecked one). A valid token's principal
is `iss/sub`, usable as `requestPrincipals` in authorization rules.

The algorithm is bound to the key, as jwt_verify_lib (Istio's) does: an RSA key verifies RS*/PS* only, an
EC key only the ES* of its curve, a JWK's `alg` (when given) must be the token's; `none` and HMAC never
verify. Keys whose `use` is not "sig", or whose `key_ops` lack "verify", are not used.

JWKS given inline is used as is; a jwksUri over http(s) is fetched by the sidecar and refreshed every few
minutes. Until it is fetched, tokens of that issuer are refused: failing closed. No other URI is read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPMessage
from typing import IO, Any

import jwt
from jwt.api_jwk import PyJWK, PyJWKSet

log = logging.getLogger("meshctl.jwt")
CLOCK_SKEW_S = 60
REFRESH_S = 300
MAX_JWKS_BYTES = 1 << 20  # a fetched JWKS; real ones are a few KB
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ALGORITHMS = frozenset(RSA_ALGORITHMS) | frozenset(EC_ALGORITHMS.values())
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
TIME_CLAIMS = ("exp", "nbf", "iat")
DEFAULT_HEADER = {"name": "authorization", "prefix": "Bearer "}
DEFAULT_PARAM = "access_token"
# Claims are checked here (typed, with our clock and skew); PyJWT checks the signature and the encoding.
_PYJWT = jwt.PyJWT({"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                    "verify_iss": False, "verify_sub": False, "verify_jti": False,
                    "enforce_minimum_key_length": True})
# What a hostile token or JWKS can make PyJWT or json raise; each becomes a JwtError (401).
_BAD_INPUT = (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)


class JwtError(Exception):
    pass


@dataclass(frozen=True)
class Key:
    """One signing key of a JWKS, bound to the algorithms it may verify."""
    kid: str | None
    by_alg: Mapping[str, PyJWK]


def jwks_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a jwksUri, or None: http(s) with a host only, as in Istio."""
    try:
        parsed = urllib.parse.urlsplit(uri) if uri.isprintable() and " " not in uri else None
        host = parsed.hostname if parsed else None
    except ValueError:  # http://[::1
        parsed = host = None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL (file paths are not read; put the keys inline with jwks)"
    return None


def signing_key(jwk: Any) -> Key:
    """The key a JWK describes, for signatures only; JwtError saying why it cannot be one."""
    if not isinstance(jwk, dict):
        raise JwtError("is not a JSON object")
    kty, kid, alg = jwk.get("kty"), jwk.get("kid"), jwk.get("alg")
    if kty not in ("RSA", "EC"):
        raise JwtError(f"kty {str(kty)[:20]!r} is not accepted (RSA or EC public keys only; never symmetric keys)")
    if kid is not None and not isinstance(kid, str):
        raise JwtError("kid must be a string")
    if "use" in jwk and jwk["use"] != "sig":
        raise JwtError(f"use is {str(jwk['use'])[:20]!r}: only \"sig\" keys verify tokens")
    if "key_ops" in jwk and (not isinstance(jwk["key_ops"], list) or "verify" not in jwk["key_ops"]):
        raise JwtError("key_ops does not include \"verify\"")
    if any(m in jwk for m in PRIVATE_MEMBERS):
        raise JwtError("holds private or secret key material; publish only the public key")
    algorithms: tuple[str, ...] = RSA_ALGORITHMS
    if kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in EC_ALGORITHMS:
            raise JwtError(f"crv {str(crv)[:20]!r} is not one of {', '.join(EC_ALGORITHMS)}")
        algorithms = (EC_ALGORITHMS[crv],)
    if alg is not None:
        if alg not in algorithms:
            curve = f" on {jwk['crv']}" if kty == "EC" else ""
            raise JwtError(f"alg {str(alg)[:20]!r} does not fit a {kty} key{curve} "
                           f"(use one of {', '.join(algorithms)})")
        algorithms = (alg,)
    try:
        by_alg = {a: PyJWK(jwk, algorithm=a) for a in algorithms}
    except _BAD_INPUT as exc:  # PyJWT's message would quote the key: say only what is wrong
        raise JwtError(f"is not a valid {kty} public key ({type(exc).__name__})") from None
    first = next(iter(by_alg.values()))
    if first.Algorithm.check_key_length(first.key):  # RSA under 2048 bits (RFC 7518 section 3.3)
        raise JwtError(f"the {kty} key is shorter than 2048 bits")
    return Key(kid, by_alg)


def _keys_list(text: str) -> list[Any]:
    try:
        document = json.loads(text)
    except _BAD_INPUT as exc:
        raise JwtError(f"not a JWKS: not JSON ({type(exc).__name__})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise JwtError("not a JWKS: JSON with a non-empty list of keys is expected")
    return keys


def jwks_problems(text: str) -> list[str]:
    """For apply time: every reason the JWKS `text` is not wholly usable for signatures, naming the key."""
    try:
        keys = _keys_list(text)
    except JwtError as exc:
        return [str(exc)]
    problems = []
    for i, jwk in enumerate(keys):
        try:
            signing_key(jwk)
        except JwtError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            problems.append(f"keys[{i}]{f' (kid {kid!r})' if isinstance(kid, str) else ''}: {exc}")
    if not problems:
        try:
            PyJWKSet(keys)  # and PyJWT's own reading of the set agrees
        except _BAD_INPUT as exc:
            problems.append(f"not a JWKS PyJWT can use ({type(exc).__name__})")
    return problems


# Headers a claim must never write: framing, hop-by-hop, the host and cookies the app reads as the client's;
# and the mesh's own: the trace context and request id the sidecar writes (a claim would replace them), the
# client address it reads for remoteIpBlocks, and Envoy's peer-identity header apps on Istio trust.
RESERVED_OUTPUTS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                              "trailer", "upgrade", "proxy-connection", "cookie",
                              "x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                              "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-forwarded-for", "forwarded",
                              "x-forwarded-client-cert"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token: header and cookie names


def rule_output_problems(rule: Mapping[str, Any]) -> list[str]:
    """For apply time: what is wrong with a rule's fromCookies, outputPayloadToHeader and outputClaimToHeaders,
    each naming its field (relative to the rule)."""
    problems = [f"fromCookies[{i}]: {str(c)[:40]!r} is not a cookie name" for i, c in
                enumerate(rule.get("fromCookies") or []) if not _TOKEN.fullmatch(str(c))]
    reads = {header_key(str(h.get("name", ""))) for h in _locations(rule)[0]}
    written: list[tuple[str, str]] = []
    if rule.get("outputPayloadToHeader") is not None:
        written.append(("outputPayloadToHeader", str(rule["outputPayloadToHeader"])))
    for i, o in enumerate(rule.get("outputClaimToHeaders") or []):
        if not o.get("claim"):
            problems.append(f"outputClaimToHeaders[{i}].claim: required (a claim name; nested ones as a.b)")
        written.append((f"outputClaimToHeaders[{i}].header", str(o.get("header", ""))))
    seen: set[str] = set()
    for field, name in written:
        key = header_key(name)
        if not _TOKEN.fullmatch(name):
            problems.append(f"{field}: {name[:40]!r} is not an HTTP header name")
        elif key in RESERVED_OUTPUTS or key in reads:
            problems.append(f"{field}: {name!r} cannot be written from a token "
                            f"({'the token is read from it' if key in reads else 'the proxy or the client owns it'})")
        elif key in seen:
            problems.append(f"{field}: header {name!r} is written twice (each output needs its own header)")
        seen.add(key)
    return problems


def parse_jwks(text: str) -> list[Key]:
    """The signing keys of a JWKS document, skipping keys that cannot verify; JwtError when it is not one."""
    keys = []
    for jwk in _keys_list(text):
        try:
            keys.append(signing_key(jwk))
        except JwtError:
            continue
    return keys


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of `token`, unverified (to pick the issuer's rule); JwtError when malformed."""
    try:
        decoded = _PYJWT.decode_complete(token, options={"verify_signature": False})
    except _BAD_INPUT as exc:
        raise JwtError(f"malformed token ({type(exc).__name__})") from None
    return dict(decoded["header"]), dict(decoded["payload"])


def verify(token: str, header: Mapping[str, Any], keys: Sequence[Key]) -> dict[str, Any]:
    """The claims of `token`, once a key of the issuer bound to its algorithm verifies it."""
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise JwtError(f"algorithm {str(alg)[:20]!r} is not accepted")  # never 'none', never HMAC
    # jwt_verify_lib's choice: a token's kid selects the keys with that kid, and the keys without one
    candidates = [k.by_alg[alg] for k in keys if alg in k.by_alg and (kid is None or k.kid in (None, kid))]
    if not candidates:
        raise JwtError(f"no key of the issuer's JWKS verifies {alg} tokens" + (f" with kid {kid[:40]!r}"
                                                                              if isinstance(kid, str) else ""))
    for pyjwk in candidates:
        try:
            return dict(_PYJWT.decode_complete(token, key=pyjwk, algorithms=[alg])["payload"])
        except jwt.InvalidSignatureError:
            continue
        except _BAD_INPUT as exc:
            raise JwtError(f"malformed token ({type(exc).__name__})") from None
    raise JwtError("signature does not verify with any key of the issuer's JWKS")


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")  # json reads NaN and Infinity
    return isinstance(value, int) and not isinstance(value, bool)


def check_claims(claims: Mapping[str, Any], audiences: Sequence[str], now: float) -> None:
    """Istio's claim checks, typed: a claim of the wrong type refuses the token rather than being skipped."""
    for name in TIME_CLAIMS:
        if name in claims and not _is_number(claims[name]):
            raise JwtError(f"claim {name} must be a number of seconds (NumericDate)")
    if "exp" in claims and now > claims["exp"] + CLOCK_SKEW_S:
        raise JwtError("token expired")
    if "nbf" in claims and now < claims["nbf"] - CLOCK_SKEW_S:
        raise JwtError("token not valid yet")
    if "iat" in claims and now < claims["iat"] - CLOCK_SKEW_S:
        raise JwtError("token issued in the future")
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise JwtError("claim sub must be a string")
    aud = claims.get("aud")
    given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if "aud" in claims and (given is None or not all(isinstance(a, str) for a in given)):
        raise JwtError("claim aud must be a string or a list of strings")
    if audiences and not set(given or []) & set(audiences):
        raise JwtError(f"audience {given or 'none'} is not one of {list(audiences)}")


# --- where tokens are ----------------------------------------------------------------------------------------------

def _locations(rule: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[str], list[str]]:
    """Istio's: fromHeaders, fromParams and fromCookies; with none, `Authorization: Bearer` and `access_token`."""
    headers, params = rule.get("fromHeaders") or [], rule.get("fromParams") or []
    cookies = rule.get("fromCookies") or []
    if not headers and not params and not cookies:
        return [DEFAULT_HEADER], [DEFAULT_PARAM], []
    return list(headers), [str(p) for p in params], [str(c) for c in cookies]


def _after_prefix(value: str, prefix: str) -> str | None:
    """The token in a header value, or None when the prefix does not match. A prefix ending in a space is
    an auth scheme, matched case-insensitively (RFC 7235) and followed by any run of spaces or tabs."""
    value = value.lstrip(" \t")
    scheme = prefix.strip(" \t")
    if not scheme:
        return value.strip(" \t")
    if value[:len(scheme)].lower() != scheme.lower():
        return None
    rest = value[len(scheme):]
    if prefix != prefix.rstrip(" \t") and rest and rest[0] not in " \t":
        return None  # `Bearerx`: another scheme
    return rest.strip(" \t")


@dataclass(frozen=True)
class Found:
    where: str
    token: str
    rules: tuple[int, ...]  # the rules that look for a token there


def header_key(name: str) -> str:
    """Header names as frameworks fold them: CGI, WSGI and Rack read `x-jwt` and `x_jwt` as one."""
    return name.lower().replace("_", "-")


def param_key(name: str) -> str:
    """Query names as frameworks fold them: PHP reads `access.token`, `access token` and `access[token`
    as `access_token`; so a look-alike beside the real name is a second token, not an unchecked one."""
    return re.sub(r"[. \[]", "_", name)


def cookie_key(name: str) -> str:
    """Cookie names as apps read them: PHP decodes and folds them as query names, ASP.NET ignores case."""
    return param_key(urllib.parse.unquote(name.strip(" \t"))).lower()


def cookies_of(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (name, value) of every Cookie field (HTTP/2 splits one into several). `,` separates too, as
    RFC 2965 readers split; Envoy's unquoting of a "quoted" value is kept."""
    pairs = []
    for field, value in headers:
        if header_key(field) != "cookie":
            continue
        for part in re.split(r"[;,]", value):
            name, eq, val = part.partition("=")
            if eq and name.strip(" \t"):
                val = val.strip(" \t")
                pairs.append((name.strip(" \t"), val[1:-1] if len(val) >= 2 and val[0] == val[-1] == '"' else val))
    return pairs


def without_cookie(value: str, name: str) -> str:
    """A Cookie field's value without the cookies that read as `name`; the others kept byte for byte."""
    parts = re.split(r"([;,])", value)  # cookie, separator, cookie, ...
    kept: list[str] = []
    for i in range(0, len(parts), 2):
        cookie = parts[i]
        if cookie_key(cookie.partition("=")[0]) == cookie_key(name) and "=" in cookie:
            continue
        if kept:
            kept.append(parts[i - 1])
        kept.append(cookie if kept else cookie.lstrip(" \t"))
    return "".join(kept).strip(" \t")


def find_tokens(rules: Sequence[Mapping[str, Any]], headers: Sequence[tuple[str, str]],
                query: Sequence[tuple[str, str]]) -> list[Found]:
    """Every token in the places any rule looks (names compared as apps fold them), one per header field or
    query parameter."""
    found = []
    for name, value in headers:
        matches = []  # (prefix length, token, rule): the longest prefix that matches wins
        for i, rule in enumerate(rules):
            for loc in _locations(rule)[0]:
                prefix = str(loc.get("prefix", ""))
                if header_key(str(loc["name"])) == header_key(name) and \
                        (token := _after_prefix(value, prefix)) is not None:
                    matches.append((len(prefix.strip(" \t")), token, i))
        if matches:
            best = max(m[0] for m in matches)
            token = next(m[1] for m in matches if m[0] == best)
            found.append(Found(f"header {name}", token, tuple(sorted({m[2] for m in matches if m[0] == best}))))
    for name, value in query:
        at = tuple(i for i, rule in enumerate(rules) if param_key(name) in map(param_key, _locations(rule)[1]))
        if at:
            found.append(Found(f"query parameter {name}", value, at))
    # Envoy reads the first cookie of a name and leaves the rest to the app; here each one is a token, so a
    # forged second cookie beside a valid one is refused rather than read unchecked by the app
    for name, value in cookies_of(headers):
        at = tuple(i for i, rule in enumerate(rules) if cookie_key(name) in map(cookie_key, _locations(rule)[2]))
        if at:
            found.append(Found(f"cookie {name}", value, at))
    return found


def query_pairs_of(target: str) -> list[tuple[str, str]]:
    """The query of a request target as every app may read it: `;` separates pairs too (older frameworks
    split on it), so a token hidden behind one is still seen (and counted)."""
    return urllib.parse.parse_qsl(target.partition("?")[2].replace(";", "&"), keep_blank_values=True)


@dataclass(frozen=True)
class Strip:
    """What to take out of the request the app receives: a header field, a cookie, and the target as it stays."""
    header: str | None
    cookie: str | None
    target: str


def token_to_strip(rules: Sequence[Mapping[str, Any]], headers: Sequence[tuple[str, str]], target: str) -> Strip:
    """Istio's forwardOriginalToken (false by default): once verified, the token is taken out of the request
    the app receives, unless a rule that looks where it was found asks to keep it: its header field, its
    cookie (Envoy leaves cookies; the default says the token is not kept) or its query parameter (the rest of
    the target kept byte for byte)."""
    found = find_tokens(rules, headers, query_pairs_of(target))
    if len(found) != 1 or any(rules[i].get("forwardOriginalToken") for i in found[0].rules):
        return Strip(None, None, target)
    kind, _, name = found[0].where.partition(" ")
    if kind == "header":
        return Strip(name, None, target)
    if kind == "cookie":
        return Strip(None, name, target)
    name = name.partition(" ")[2]  # query parameter NAME
    path, _, raw = target.partition("?")
    kept = [part for part in re.split(r"[&;]", raw) if urllib.parse.unquote_plus(part.partition("=")[0]) != name]
    return Strip(None, None, path + ("?" + "&".join(kept) if any(kept) else ""))


# --- what a verified token adds to the request --------------------------------------------------------------------

def output_headers(rules: Sequence[Mapping[str, Any]]) -> set[str]:
    """Every header some rule writes from a token (folded as apps fold names): a client's own are removed
    from every request, token or not, so none can pass as the sidecar's."""
    names = {header_key(str(r["outputPayloadToHeader"])) for r in rules if r.get("outputPayloadToHeader")}
    return names | {header_key(str(o.get("header", ""))) for r in rules for o in r.get("outputClaimToHeaders") or []}


def claim_text(claims: Mapping[str, Any], path: str) -> str | None:
    """A claim as Envoy writes it into a header: strings as they are, numbers (whole ones without a point),
    true/false; nested claims by `a.b.c`. None for objects and lists (Istio copies string/int/bool only),
    and for a value with control characters, which must never become header framing."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):  # as signed, any size (float() of a 400-digit claim overflows)
        text = str(value)
    elif _is_number(value):
        text = str(int(value)) if value.is_integer() else repr(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text if text and not any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in text) else None


def outputs(rule: Mapping[str, Any], token: str, claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The header fields the rule that verified `token` adds: the payload as it was signed (base64url, no
    padding: Envoy's forward_payload_header) and each claim asked for that has a value to copy."""
    added = []
    if rule.get("outputPayloadToHeader"):
        added.append((str(rule["outputPayloadToHeader"]).lower(), token.split(".")[1]))
    for o in rule.get("outputClaimToHeaders") or []:
        if (text := claim_text(claims, str(o.get("claim", "")))) is not None:
            added.append((str(o["header"]).lower(), text))
    return added


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// too; a JWKS server may only send us to another http(s) URL."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if jwks_uri_problem(newurl):
            raise urllib.error.HTTPError(newurl, code, "redirect to a URL that is not http(s) refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


class Jwks:
    """Keys per rule: parsed inline JWKS, and fetched remote ones with their age."""

    def __init__(self) -> None:
        self.inline: dict[str, list[Key]] = {}
        self.remote: dict[str, tuple[float, list[Key]]] = {}
        self.errors: dict[str, str] = {}
        self._fetching: set[str] = set()

    def keys(self, rule: Mapping[str, Any]) -> list[Key]:
        if rule.get("jwks_error"):
            raise JwtError(str(rule["jwks_error"]))
        if rule.get("jwks"):
            text = str(rule["jwks"])
            if text not in self.inline:
                self.inline[text] = parse_jwks(text)
            return self.inline[text]
        uri = str(rule.get("jwksUri"))
        if jwks_uri_problem(uri):  # only http(s) is fetched: never a file of the sidecar's
            raise JwtError(f"the jwksUri {uri[:80]!r} is not an http(s) URL")
        fetched = self.remote.get(uri)
        if fetched is None or time.monotonic() - fetched[0] > REFRESH_S:
            self._fetch_soon(uri)
        if fetched is None:
            raise JwtError(f"the JWKS at {uri} is not available yet" + (f" ({self.errors[uri]})"
                                                                          if uri in self.errors else ""))
        return fetched[1]

    def _fetch_soon(self, uri: str) -> None:
        if uri in self._fetching or jwks_uri_problem(uri):
            return
        self._fetching.add(uri)
        try:
            asyncio.get_running_loop().create_task(self._fetch(uri))
        except RuntimeError:  # no loop (tests): fetch now
            self._fetching.discard(uri)

    async def _fetch(self, uri: str) -> None:
        def get() -> str:
            with _OPENER.open(uri, timeout=5) as resp:
                body = resp.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise JwtError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            return str(body.decode())
        try:
            self.remote[uri] = (time.monotonic(), parse_jwks(await asyncio.to_thread(get)))
            self.errors.pop(uri, None)
            log.info("fetched JWKS from %s", uri)
        except Exception as exc:
            self.errors[uri] = str(exc)
            log.warning("cannot fetch JWKS from %s: %s", uri, exc)
        finally:
            self._fetching.discard(uri)

    def prefetch(self, rules: Sequence[Mapping[str, Any]]) -> None:
        for rule in rules:
            if rule.get("jwksUri") and not rule.get("jwks"):
                self._fetch_soon(str(rule["jwksUri"]))


@dataclass(frozen=True)
class Verified:
    principal: str
    claims: dict[str, Any]
    token: str
    rule: Mapping[str, Any]  # the rule whose keys verified it


def verify_request(rules: Sequence[Mapping[str, Any]], jwks: Jwks, headers: Sequence[tuple[str, str]],
                   query: Sequence[tuple[str, str]], now: float) -> Verified | None:
    """The verified token of a request; None when there is none; JwtError when it is invalid or the request
    carries more than one. `headers` and `query` are every field and every pair, repeats kept."""
    found = find_tokens(rules, headers, query)
    if not found:
        return None
    if len(found) > 1:
        raise JwtError(f"the request carries {len(found)} tokens ({', '.join(f.where for f in found)[:200]}); "
                       "send exactly one")
    token, at = found[0].token, [rules[i] for i in found[0].rules]
    header, unverified = decode(token)
    issuer = unverified.get("iss")
    matching = [r for r in at if isinstance(issuer, str) and r.get("issuer") == issuer]
    if not matching:
        raise JwtError(f"issuer {str(issuer)[:80]!r} is not accepted in the {found[0].where[:80]}")
    errors = []
    for rule in matching:
        try:
            claims = verify(token, header, jwks.keys(rule))
            check_claims(claims, rule.get("audiences") or [], now)
            if claims.get("iss") != issuer:  # what was signed is what chose the rule
                raise JwtError("issuer changed between decoding and verifying")
            return Verified(f"{issuer}/{claims.get('sub', '')}", claims, token, rule)
        except JwtError as exc:
            errors.append(str(exc))
    raise JwtError("; ".join(dict.fromkeys(errors)))


def authenticate(rules: Sequence[Mapping[str, Any]], jwks: Jwks, headers: Sequence[tuple[str, str]],
                 query: Sequence[tuple[str, str]], now: float) -> tuple[str | None, dict[str, Any]]:
    """(principal, claims) of a valid token; (None, {}) when there is none; JwtError as verify_request."""
    verified = verify_request(rules, jwks, headers, query, now)
    return (verified.principal, verified.claims) if verified else (None, {})

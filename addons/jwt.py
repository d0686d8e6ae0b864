"""RequestAuthentication: validate JWTs (issuer, audiences, signature from a JWKS, expiry).

A request without a token passes unauthenticated (Istio's rule: an AuthorizationPolicy decides whether
that is enough); a request with a token that fails any check is refused with 401. A valid token's
principal is `iss/sub`, usable as `requestPrincipals` in authorization rules.

JWKS given inline (or from a file, which the control plane inlines) is used as is; a jwksUri over http(s)
is fetched by the sidecar and refreshed every few minutes. Until it is fetched, tokens of that issuer are
refused: failing closed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

log = logging.getLogger("meshctl.jwt")
CLOCK_SKEW_S = 60
REFRESH_S = 300
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384,
                                                         "512": hashes.SHA512}
CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1,
                                                      "P-521": ec.SECP521R1}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class JwtError(Exception):
    pass


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: str) -> int:
    return int.from_bytes(b64url(text), "big")


def parse_jwks(text: str) -> list[tuple[str | None, PublicKey]]:
    """(kid, key) for every RSA and EC key in a JWKS document; JwtError when it is not one."""
    keys: list[tuple[str | None, PublicKey]] = []
    try:
        for jwk in json.loads(text).get("keys", []):
            kty = jwk.get("kty")
            if kty == "RSA":
                keys.append((jwk.get("kid"), rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()))
            elif kty == "EC" and jwk.get("crv") in CURVES:
                numbers = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), CURVES[jwk["crv"]]())
                keys.append((jwk.get("kid"), numbers.public_key()))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise JwtError(f"the issuer's JWKS is not usable ({type(exc).__name__}: {exc})") from exc
    return keys


def verify_signature(header: Mapping[str, Any], signing_input: bytes, signature: bytes,
                     keys: Sequence[tuple[str | None, PublicKey]]) -> None:
    alg = str(header.get("alg", ""))
    if alg[:2] not in ("RS", "ES", "PS") or alg[2:] not in HASHES:
        raise JwtError(f"algorithm {alg!r} is not accepted")  # never 'none', never HMAC with a public key
    digest = HASHES[alg[2:]]()
    candidates = [k for kid, k in keys if header.get("kid") in (None, kid)] or [k for _, k in keys]
    for key in candidates:
        try:
            if alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signing_input, padding.PKCS1v15(), digest)
            elif alg.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
            elif alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
                half = len(signature) // 2
                der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                           int.from_bytes(signature[half:], "big"))
                key.verify(der, signing_input, ec.ECDSA(digest))
            else:
                continue
            return
        except InvalidSignature:
            continue
    raise JwtError("signature does not verify with any key of the issuer's JWKS")


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    try:
        head, body, sig = token.split(".")
        header, claims = json.loads(b64url(head)), json.loads(b64url(body))
        signature = b64url(sig)
    except (ValueError, TypeError, RecursionError) as exc:
        raise JwtError("malformed token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("malformed token: its header and claims must be JSON objects")
    return header, claims, f"{head}.{body}".encode(), signature


def check_claims(claims: Mapping[str, Any], audiences: Sequence[str], now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, (int, float)) and now > exp + CLOCK_SKEW_S:
        raise JwtError("token expired")
    if isinstance(nbf, (int, float)) and now < nbf - CLOCK_SKEW_S:
        raise JwtError("token not valid yet")
    if audiences:
        aud = claims.get("aud")
        given = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) \
            else []
        if not set(given) & set(audiences):
            raise JwtError(f"audience {given or 'none'} is not one of {list(audiences)}")


def find_token(rule: Mapping[str, Any], headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    locations = rule.get("fromHeaders") or ([] if rule.get("fromParams") else
                                            [{"name": "authorization", "prefix": "Bearer "}])
    for loc in locations:
        value = headers.get(str(loc["name"]).lower())
        prefix = loc.get("prefix", "")
        if value is not None and value.startswith(prefix):
            return value[len(prefix):].strip()
    for name in rule.get("fromParams") or (["access_token"] if not rule.get("fromHeaders") else []):
        if name in query:
            return query[name]
    return None


class Jwks:
    """Keys per rule: parsed inline JWKS, and fetched remote ones with their age."""

    def __init__(self) -> None:
        self.inline: dict[str, list[tuple[str | None, PublicKey]]] = {}
        self.remote: dict[str, tuple[float, list[tuple[str | None, PublicKey]]]] = {}
        self.errors: dict[str, str] = {}
        self._fetching: set[str] = set()

    def keys(self, rule: Mapping[str, Any]) -> list[tuple[str | None, PublicKey]]:
        if rule.get("jwks_error"):
            raise JwtError(rule["jwks_error"])
        if rule.get("jwks"):
            text = str(rule["jwks"])
            if text not in self.inline:
                self.inline[text] = parse_jwks(text)
            return self.inline[text]
        uri = str(rule.get("jwksUri"))
        fetched = self.remote.get(uri)
        if fetched is None or time.monotonic() - fetched[0] > REFRESH_S:
            self._fetch_soon(uri)
        if fetched is None:
            raise JwtError(f"the JWKS at {uri} is not available yet" + (f" ({self.errors[uri]})"
                                                                          if uri in self.errors else ""))
        return fetched[1]

    def _fetch_soon(self, uri: str) -> None:
        if uri in self._fetching:
            return
        self._fetching.add(uri)
        try:
            asyncio.get_running_loop().create_task(self._fetch(uri))
        except RuntimeError:  # no loop (tests): fetch now
            self._fetching.discard(uri)

    async def _fetch(self, uri: str) -> None:
        def get() -> str:
            with urllib.request.urlopen(uri, timeout=5) as resp:
                return str(resp.read().decode())
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


def authenticate(rules: Sequence[Mapping[str, Any]], jwks: Jwks, headers: Mapping[str, str],
                 query: Mapping[str, str], now: float) -> tuple[str | None, dict[str, Any]]:
    """(principal, claims) of a valid token; (None, {}) when there is none; JwtError when one is invalid."""
    for rule in rules:
        token = find_token(rule, headers, query)
        if token is None:
            continue
        header, claims, signing_input, signature = decode(token)
        issuer = claims.get("iss")
        matching = [r for r in rules if r.get("issuer") == issuer]
        if not matching:
            raise JwtError(f"issuer {issuer!r} is not accepted")
        errors = []
        for candidate in matching:
            try:
                verify_signature(header, signing_input, signature, jwks.keys(candidate))
                check_claims(claims, candidate.get("audiences") or [], now)
                return f"{issuer}/{claims.get('sub', '')}", dict(claims)
            except JwtError as exc:
                errors.append(str(exc))
        raise JwtError("; ".join(dict.fromkeys(errors)))
    return None, {}

"""Real keys, JWKS documents and tokens for the JWT tests: signed with PyJWT, or by hand where PyJWT would
refuse to make the forgery (a token signed by the wrong curve, HMAC keyed with the public key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://auth.example"
AUDIENCE = "bookinfo"
NOW = time.time()

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
P521 = ec.generate_private_key(ec.SECP521R1())
ENC_KEY = ec.generate_private_key(ec.SECP256R1())  # published with use=enc: must never verify
STRANGER = ec.generate_private_key(ec.SECP256R1())  # not in any JWKS
STRANGER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: PrivateKey, kid: str | None = None, **extra: Any) -> dict[str, Any]:
    """The public JWK of `key`, with `kid` and any extra members (use, key_ops, alg)."""
    public = key.public_key()
    doc = dict(RSAAlgorithm.to_jwk(public, as_dict=True) if isinstance(public, rsa.RSAPublicKey)
               else ECAlgorithm.to_jwk(public, as_dict=True))
    if kid is not None:
        doc["kid"] = kid
    return {**doc, **extra}


def jwks(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


# The issuer's JWKS: every kind of signing key, plus one encryption key that must be ignored.
JWKS = jwks(jwk(RSA_KEY, "rsa"), jwk(P256, "p256"), jwk(P384, "p384"), jwk(P521, "p521"),
            jwk(ENC_KEY, "enc", use="enc"))
RULE: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": JWKS}
RULES = [RULE]


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims, with `changes` applied (a value of `...` removes the claim)."""
    base: dict[str, Any] = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": int(NOW) - 10,
                            "nbf": int(NOW) - 10, "exp": int(NOW) + 3600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def sign(key: PrivateKey, alg: str, body: dict[str, Any], kid: str | None = None) -> str:
    """A token PyJWT signs (json allows NaN, so odd claims go through too)."""
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def raw_token(header: dict[str, Any], body: Any, signature: bytes) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}.{b64(signature)}"


def ecdsa_token(key: ec.EllipticCurvePrivateKey, alg: str, body: dict[str, Any], kid: str | None = None,
                digest: hashes.HashAlgorithm | None = None) -> str:
    """Signed by hand: any curve with any hash, as JOSE lays ECDSA signatures out (r || s)."""
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(digest or hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return f"{signing}.{b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def hmac_with_public_key(key: PrivateKey, body: dict[str, Any], kid: str | None = None) -> str:
    """The classic confusion: HS256 keyed with the issuer's public key (PEM), which anyone can get."""
    secret = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def none_token(body: dict[str, Any], alg: str = "none") -> str:
    return f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(body).encode())}."


GOOD = {
    "RS256": sign(RSA_KEY, "RS256", claims(), "rsa"),
    "RS512": sign(RSA_KEY, "RS512", claims(), "rsa"),
    "PS256": sign(RSA_KEY, "PS256", claims(), "rsa"),
    "PS384": sign(RSA_KEY, "PS384", claims(aud=["other", AUDIENCE])),  # no kid: every key of the JWKS is tried
    "ES256": sign(P256, "ES256", claims(), "p256"),
    "ES384": sign(P384, "ES384", claims(exp=NOW + 3600.5), "p384"),
    "ES512": sign(P521, "ES512", claims(iat=..., nbf=...), "p521"),
}
_HEAD, _BODY, _SIG = sign(P256, "ES256", claims(sub="bob"), "p256").split(".")
FORGED = {
    "stranger": sign(STRANGER, "ES256", claims(), "p256"),
    "stranger rsa": sign(STRANGER_RSA, "RS256", claims(), "rsa"),
    "alg none": none_token(claims()),
    "alg None": none_token(claims(), "None"),
    "HS256 with the public key": hmac_with_public_key(RSA_KEY, claims(), "rsa"),
    "HS256 with the EC public key": hmac_with_public_key(P256, claims(), "p256"),
    "ES256 by the P-384 key": ecdsa_token(P384, "ES256", claims(), "p384"),
    "ES256 by the P-384 key, no kid": ecdsa_token(P384, "ES256", claims()),
    "ES384 by the P-256 key": ecdsa_token(P256, "ES384", claims(), "p256", hashes.SHA384()),
    "ES512 by the P-384 key": ecdsa_token(P384, "ES512", claims(), "p384", hashes.SHA512()),
    "use=enc key": sign(ENC_KEY, "ES256", claims(), "enc"),
    "use=enc key, no kid": sign(ENC_KEY, "ES256", claims()),
    "expired": sign(P256, "ES256", claims(exp=int(NOW) - 3600), "p256"),
    "exp as a string": sign(P256, "ES256", claims(exp=str(int(NOW) + 3600)), "p256"),
    "exp past, as a string": sign(P256, "ES256", claims(exp=str(int(NOW) - 3600)), "p256"),
    "wrong audience": sign(P256, "ES256", claims(aud="other"), "p256"),
    "wrong issuer": sign(P256, "ES256", claims(iss="https://evil.example"), "p256"),
    "tampered payload": ".".join([_HEAD, b64(json.dumps(claims(sub="admin")).encode()), _SIG]),
    "signature of another token": ".".join([_HEAD, _BODY, GOOD["ES256"].split(".")[2]]),
}

"""Offline development kit: an issuer that mints Altinn 2, Maskinporten and Altinn 3 tokens.

Used by the tests, the ``mint`` CLI command and the demo. Keys are RSA-2048, generated at
runtime (never stored); each has a self-signed certificate so ``x5c``/``x5t`` work as with
Altinn 2 (docs/protocol.md §3.1). :meth:`DevIssuer.asgi_app` serves the JWK sets and RFC 8414 metadata.

Nothing here is hardened: :func:`encode_token` signs whatever it is given (attack tests need
``HS256`` with a PEM as the secret, ``alg: none``, duplicate members and the like).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID
from jwt.algorithms import get_default_algorithms

from samtykke_gateway.tokens.keys import x5t_of_der

__all__ = ["DevIssuer", "DevKey", "b64url", "encode_token"]

_HMAC_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_ROLES = ("altinn", "maskinporten")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(part: dict[str, Any] | bytes | str) -> str:
    if isinstance(part, dict):
        raw = json.dumps(part, separators=(",", ":")).encode("utf-8")
    elif isinstance(part, str):
        raw = part.encode("utf-8")
    else:
        raw = bytes(part)
    return b64url(raw)


def encode_token(
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    private_key: Any | bytes | str,
    alg: str = "RS256",
) -> str:
    """Sign a compact JWS without any checks.

    :param header: JOSE header; a ``dict`` is serialised compactly (``alg`` is *not* added),
        ``bytes``/``str`` are used verbatim (for duplicate members, ``NaN``, ...).
    :param payload: claims, same rules as ``header``.
    :param private_key: a ``cryptography`` private key or PEM for RS*/PS*/ES*; any bytes/str
        secret for HS* (used as-is, even a public-key PEM); ignored for ``none``.
    :param alg: JWS ``alg`` used to sign (independent of the header's ``alg``).
    :returns: ``header.payload.signature`` (empty signature for ``none``).
    """
    signing_input = f"{_json_segment(header)}.{_json_segment(payload)}"
    message = signing_input.encode("ascii")
    if alg.lower() == "none":
        signature = b""
    elif alg in _HMAC_HASHES:
        secret = private_key.encode("utf-8") if isinstance(private_key, str) else private_key
        signature = hmac.new(bytes(secret), message, _HMAC_HASHES[alg]).digest()
    else:
        algorithm = get_default_algorithms()[alg]
        signature = algorithm.sign(message, algorithm.prepare_key(private_key))
    return f"{signing_input}.{b64url(signature)}"


class DevKey:
    """An RSA-2048 signing key with a self-signed certificate.

    :param kid: key id; defaults to the certificate's ``x5t`` (as Altinn 2 does).
    :param common_name: certificate subject CN.
    :ivar private_key: ``RSAPrivateKey``.
    :ivar certificate: ``x509.Certificate`` (self-signed, 1 year).
    :ivar x5t: base64url SHA-1 thumbprint of the certificate DER.
    :ivar kid: published key id.
    """

    def __init__(
        self,
        *,
        kid: str | None = None,
        common_name: str = "samtykke-gateway dev",
        private_key: rsa.RSAPrivateKey | None = None,
        certificate: x509.Certificate | None = None,
    ) -> None:
        self.private_key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if certificate is not None:
            self.certificate = certificate
        else:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            now = dt.datetime.now(dt.UTC)
            self.certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self.private_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=365))
                .sign(self.private_key, hashes.SHA256())
            )
        self.certificate_der = self.certificate.public_bytes(Encoding.DER)
        self.x5t = x5t_of_der(self.certificate_der)
        self.kid = kid if kid is not None else self.x5t

    @classmethod
    def from_private_key(
        cls,
        private_key: Any,
        certificate: x509.Certificate,
        *,
        kid: str | None = None,
        common_name: str = "samtykke-gateway dev",
    ) -> DevKey:
        """Wrap an existing RSA key and its certificate (the ``mint`` CLI's persisted dev keys).

        :raises TypeError: not an RSA private key.
        """
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("dev keys are RSA")
        return cls(kid=kid, common_name=common_name, private_key=private_key, certificate=certificate)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM of the public key."""
        return self.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def private_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM of the private key (for the ``mint`` CLI; never commit it)."""
        return self.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    def public_jwk(self, include_x5c: bool = True) -> dict[str, Any]:
        """Public JWK (RFC 7517 §4, RFC 7518 §6.3.1) with ``kid``, ``x5t`` and optionally ``x5c``."""
        numbers = self.public_key.public_numbers()
        jwk: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "x5t": self.x5t,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }
        if include_x5c:
            jwk["x5c"] = [base64.b64encode(self.certificate_der).decode("ascii")]
        return jwk

    def x5c_only_jwk(self) -> dict[str, Any]:
        """A JWK that publishes only the certificate (no ``kid``/``x5t``/``n``/``e``)."""
        return {
            "kty": "RSA",
            "use": "sig",
            "x5c": [base64.b64encode(self.certificate_der).decode("ascii")],
        }


def _now() -> int:
    return int(time.time())


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _party(orgno: str) -> dict[str, str]:
    return {"authority": "iso6523-actorid-upis", "ID": f"0192:{orgno}"}


def _finish(
    base: dict[str, Any], overrides: dict[str, Any] | None, drop: Sequence[str]
) -> dict[str, Any]:
    out = dict(base)
    if overrides:
        out.update(overrides)
    for name in drop:
        out.pop(name, None)
    return out


class DevIssuer:
    """Offline Altinn 2 + Maskinporten (+ Altinn 3 consent) issuer.

    Holds a primary key per role (``"altinn"``, ``"maskinporten"``); :meth:`rotate` adds a new
    primary and keeps the previous one published as secondary (docs/protocol.md §3.1 rotation).
    """

    ALTINN_ISSUER = "altinn.no"
    MASKINPORTEN_ISSUER = "https://dev.maskinporten.local/"
    ALTINN3_DELEGATION_SOURCE = "https://dev.altinn.local/"

    def __init__(self) -> None:
        self._keys: dict[str, list[DevKey]] = {
            "altinn": [DevKey(common_name="dev.altinn.local")],
            "maskinporten": [
                DevKey(kid=f"mp-{uuid.uuid4().hex[:12]}", common_name="dev.maskinporten.local")
            ],
        }

    def key(self, role: str) -> DevKey:
        """The current primary key of ``role``."""
        return self._keys[self._role(role)][0]

    def keys(self, role: str) -> list[DevKey]:
        """Published keys of ``role``, primary first."""
        return list(self._keys[self._role(role)])

    def rotate(self, role: str) -> DevKey:
        """Make a new primary key for ``role``; the previous primary stays published."""
        role = self._role(role)
        if role == "altinn":
            new = DevKey(common_name="dev.altinn.local")
        else:
            new = DevKey(kid=f"mp-{uuid.uuid4().hex[:12]}", common_name="dev.maskinporten.local")
        self._keys[role] = [new, self._keys[role][0]]
        return new

    def jwks(self, role: str, *, x5c_only: bool = False) -> dict[str, Any]:
        """JWK Set (RFC 7517 §5) of ``role``; ``x5c_only`` publishes certificates only."""
        keys = self._keys[self._role(role)]
        if x5c_only:
            return {"keys": [k.x5c_only_jwk() for k in keys]}
        return {"keys": [k.public_jwk(include_x5c=True) for k in keys]}

    def asgi_app(self, *, x5c_only: bool = False, max_age_seconds: int = 300) -> Any:
        """Starlette app serving ``GET /{role}/jwk`` and ``/{role}/.well-known/oauth-authorization-server``.

        Metadata ``jwks_uri`` is absolute, built from the request's ``Host``. Responses carry
        ``Cache-Control: max-age=<max_age_seconds>``.
        """
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        cache = {"Cache-Control": f"max-age={max_age_seconds}"}
        issuers = {"altinn": self.ALTINN_ISSUER, "maskinporten": self.MASKINPORTEN_ISSUER}

        async def jwk(request: Request) -> JSONResponse:
            role = request.path_params["role"]
            if role not in _ROLES:
                return JSONResponse({"error": "not_found"}, status_code=404)
            return JSONResponse(self.jwks(role, x5c_only=x5c_only), headers=cache)

        async def metadata(request: Request) -> JSONResponse:
            role = request.path_params["role"]
            if role not in _ROLES:
                return JSONResponse({"error": "not_found"}, status_code=404)
            base = str(request.base_url).rstrip("/")
            body = {"issuer": issuers[role], "jwks_uri": f"{base}/{role}/jwk"}
            return JSONResponse(body, headers=cache)

        return Starlette(
            routes=[
                Route("/{role}/jwk", jwk, methods=["GET"]),
                Route("/{role}/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
            ]
        )

    def issuer_policies(
        self,
        *,
        http: Any,
        base_url: str,
        discovery: bool = False,
        leeway_seconds: float = 30,
        **keyset_options: Any,
    ) -> dict[str, Any]:
        """``{"altinn": IssuerPolicy, "maskinporten": IssuerPolicy}`` for :meth:`asgi_app` served
        at ``base_url``; ``discovery`` uses the RFC 8414 metadata URLs instead of the JWKS URLs.

        :param http: ``httpx.AsyncClient`` for the key sets (owned by the caller).
        :param keyset_options: passed to each :class:`~samtykke_gateway.tokens.keys.KeySet`.
        """
        from samtykke_gateway.tokens.keys import KeySet
        from samtykke_gateway.tokens.verify import IssuerPolicy

        issuers = {"altinn": self.ALTINN_ISSUER, "maskinporten": self.MASKINPORTEN_ISSUER}
        policies: dict[str, Any] = {}
        for role, issuer in issuers.items():
            base = f"{base_url}/{role}"
            keys = KeySet(
                name=role,
                http=http,
                jwks_url=None if discovery else f"{base}/jwk",
                metadata_url=f"{base}/.well-known/oauth-authorization-server"
                if discovery
                else None,
                **keyset_options,
            )
            policies[role] = IssuerPolicy(
                name=role,
                issuer=issuer,
                algorithms=("RS256",),
                keys=keys,
                leeway_seconds=leeway_seconds,
            )
        return policies

    def mint_altinn2(
        self,
        *,
        subject: str,
        consumer: str,
        services: Sequence[str],
        supplier: str | None = None,
        consent_id: str | None = None,
        valid_to: int | str | None = None,
        delegated: int | str | None = None,
        lifetime_seconds: int = 30,
        claim_name: str = "Services",
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: Sequence[str] = (),
        key: DevKey | None = None,
    ) -> str:
        """An Altinn 2 consent token (docs/protocol.md §3.1), RS256.

        ``claims`` merge over the payload, ``header`` over the header; ``drop`` removes names
        from both. Times are epoch seconds unless given as strings.
        """
        key = key or self.key("altinn")
        now = _now()
        payload: dict[str, Any] = {
            claim_name: list(services),
            "AuthorizationCode": consent_id or str(uuid.uuid4()),
            "OfferedBy": subject,
            "CoveredBy": consumer,
        }
        if supplier is not None:
            payload["HandledBy"] = supplier
        payload.update(
            {
                "DelegatedDate": now if delegated is None else delegated,
                "ValidToDate": now + 86400 if valid_to is None else valid_to,
                "iss": self.ALTINN_ISSUER,
                "exp": now + lifetime_seconds,
                "nbf": now,
            }
        )
        head = {"alg": "RS256", "typ": "JWT", "kid": key.x5t, "x5t": key.x5t}
        return encode_token(
            _finish(head, header, drop), _finish(payload, claims, drop), key.private_key
        )

    def mint_maskinporten(
        self,
        *,
        consumer: str,
        scope: str,
        supplier: str | None = None,
        client_id: str = "dev-client",
        authorization_details: list[dict[str, Any]] | None = None,
        lifetime_seconds: int = 120,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: Sequence[str] = (),
        key: DevKey | None = None,
    ) -> str:
        """A Maskinporten access token (docs/protocol.md §3.2), optionally with Altinn 3 consent (§3.3)."""
        key = key or self.key("maskinporten")
        now = _now()
        payload: dict[str, Any] = {
            "iss": self.MASKINPORTEN_ISSUER,
            "scope": scope,
            "consumer": _party(consumer),
        }
        if supplier is not None:
            payload["supplier"] = _party(supplier)
            payload["delegation_source"] = self.ALTINN3_DELEGATION_SOURCE
        payload.update(
            {
                "client_id": client_id,
                "jti": jti or str(uuid.uuid4()),
                "iat": now,
                "exp": now + lifetime_seconds,
                "token_type": "Bearer",
            }
        )
        if authorization_details is not None:
            payload["authorization_details"] = authorization_details
        head = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        return encode_token(
            _finish(head, header, drop), _finish(payload, claims, drop), key.private_key
        )

    @staticmethod
    def altinn3_consent(
        *,
        subject: str,
        consumer: str,
        rights: Sequence[tuple[str | None, dict[str, str]]],
        consent_id: str | None = None,
        valid_to: str | None = None,
        consented: str | None = None,
        actions: Sequence[str] = ("consent",),
        handled_by: str | None = None,
    ) -> dict[str, Any]:
        """One ``authorization_details`` entry of type ``urn:altinn:consent`` (docs/protocol.md
        §3.3).

        :param subject: 11-digit person id or 9-digit organisation number.
        :param rights: ``(resource id, metadata)`` pairs, one ``consentRights`` entry each; a
            ``None`` resource id gives a right that lists no resource (``"resource": []``).
        :param actions: every right's ``action`` (Digdir's examples ``["consent"]``, Altinn's
            ``["read"]``, migrated consents ``["Read", "Write"]``).
        :param handled_by: org number for ``handledBy`` (the consent's handler); absent if ``None``.
        """
        kind = "organization" if len(subject) == 9 else "person"
        now = dt.datetime.now(dt.UTC)
        entry: dict[str, Any] = {
            "type": "urn:altinn:consent",
            "id": consent_id or str(uuid.uuid4()),
            "from": f"urn:altinn:{kind}:identifier-no:{subject}",
            "to": _party(consumer),
        }
        if handled_by is not None:
            entry["handledBy"] = _party(handled_by)
        entry.update(
            {
                "consented": consented or _iso(now),
                "validTo": valid_to or _iso(now + dt.timedelta(days=1)),
                "consentRights": [
                    {
                        "action": list(actions),
                        "resource": []
                        if resource is None
                        else [{"type": "urn:altinn:resource", "value": resource}],
                        "metadata": dict(metadata),
                    }
                    for resource, metadata in rights
                ],
            }
        )
        return entry

    @staticmethod
    def _role(role: str) -> str:
        if role not in _ROLES:
            raise ValueError(f"role must be one of {_ROLES}, not {role!r}")
        return role

"""``samtykke-gateway mint`` and ``dev-issuer``: the offline dev kit on the command line.

Dev keys are generated on first use and kept in ``--keys-dir`` (default ``.samtykke-dev/``,
mode 0700, git-ignored), so tokens minted by one command verify against the JWKS that
``dev-issuer`` serves from another. They are development keys: never commit them, never
configure them in a ``tt02``/``prod`` profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from .testing import DevIssuer, DevKey

__all__ = ["add_dev_parsers", "dev_issuer_command", "load_dev_issuer", "mint_command"]

DEFAULT_KEYS_DIR = ".samtykke-dev"


def load_dev_issuer(keys_dir: str | Path) -> DevIssuer:
    """A :class:`DevIssuer` whose keys persist in ``keys_dir`` (created 0700 on first use)."""
    path = Path(keys_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    issuer = DevIssuer()
    for role in ("altinn", "maskinporten"):
        pem_file = path / f"{role}.pem"
        cert_file = path / f"{role}.crt"
        meta_file = path / f"{role}.json"
        if pem_file.exists() and meta_file.exists() and cert_file.exists():
            meta = json.loads(meta_file.read_text())
            key = load_pem_private_key(pem_file.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            issuer._keys[role] = [DevKey.from_private_key(key, cert, kid=meta.get("kid"), common_name=meta["cn"])]
        else:
            key_obj = issuer.key(role)
            fd = os.open(pem_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_obj.private_pem())
            cert_file.write_bytes(key_obj.certificate.public_bytes(Encoding.PEM))
            cn = "dev.altinn.local" if role == "altinn" else "dev.maskinporten.local"
            meta_file.write_text(json.dumps({"kid": key_obj.kid, "cn": cn}))
    return issuer


def _metadata_pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--metadata wants key=value, got {item!r}")
        out[key] = value
    return out


def mint_command(args: argparse.Namespace) -> int:
    """Print one token (or an A2 pair as two lines: bearer, consent)."""
    issuer = load_dev_issuer(args.keys_dir)
    metadata = _metadata_pairs(args.metadata or [])
    aud = {"aud": args.audience} if getattr(args, "audience", None) else None
    if args.kind == "altinn2":
        suffix = "".join(f"_{k}={v}" for k, v in metadata.items())
        services = [f"{s}{suffix}" for s in args.service]
        consent = issuer.mint_altinn2(
            subject=args.subject, consumer=args.consumer, services=services, supplier=args.supplier,
            lifetime_seconds=args.lifetime,
        )
        bearer = issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                          lifetime_seconds=max(args.lifetime, 120), claims=aud)
        if args.pair:
            print(f"Authorization: Bearer {bearer}")
            print(f"AltinnSamtykke: {consent}")
        else:
            print(consent)
    elif args.kind == "maskinporten":
        print(issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                       lifetime_seconds=args.lifetime, claims=aud))
    else:
        details = [
            DevIssuer.altinn3_consent(
                subject=args.subject, consumer=args.consumer, rights=[(r, metadata) for r in args.resource]
            )
        ]
        print(issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                       authorization_details=details, lifetime_seconds=args.lifetime, claims=aud))
    return 0


def dev_issuer_command(args: argparse.Namespace) -> int:
    """Serve the dev keys' JWKS (``/altinn/jwk``, ``/maskinporten/jwk``) and RFC 8414 metadata."""
    import uvicorn

    issuer = load_dev_issuer(args.keys_dir)
    print(f"dev issuer on http://{args.host}:{args.port}/altinn/jwk and /maskinporten/jwk", file=sys.stderr)
    uvicorn.run(issuer.asgi_app(), host=args.host, port=args.port, log_level="warning")
    return 0


def add_dev_parsers(sub: Any, *, mint: Callable[..., int], dev_issuer: Callable[..., int]) -> None:
    p = sub.add_parser("mint", help="print dev-signed tokens (Altinn 2, Maskinporten, Altinn 3)")
    p.add_argument("kind", choices=["altinn2", "maskinporten", "altinn3"])
    p.add_argument("--keys-dir", default=DEFAULT_KEYS_DIR,
                   help="where the dev keys live (created on first use; dev-issuer must use the same)")
    p.add_argument("--subject", default="01029413157", help="person id (11) or org number (9)")
    p.add_argument("--consumer", default="999999999", help="consumer org number")
    p.add_argument("--supplier", default=None, help="supplier org number (acting for the consumer)")
    p.add_argument("--scope", default="skatteetaten:inntekt", help="Maskinporten scope")
    p.add_argument("--audience", default=None, help="aud claim of the Maskinporten token (try [issuers.*] audience)")
    p.add_argument("--service", action="append", default=None, help="A2 service code_edition (repeatable)")
    p.add_argument("--resource", action="append", default=None, help="A3 resource id (repeatable)")
    p.add_argument("--metadata", action="append", help="key=value consent metadata (repeatable)")
    p.add_argument("--lifetime", type=int, default=120, help="token lifetime, seconds")
    p.add_argument("--pair", action="store_true", help="altinn2: print both headers of the A2 pair")
    p.set_defaults(func=mint)

    def fix_defaults(ns: argparse.Namespace) -> None:
        ns.service = ns.service or ["4804_210607"]
        ns.resource = ns.resource or ["ske-innrapportert-inntekt"]

    p.set_defaults(_fix=fix_defaults)

    p = sub.add_parser("dev-issuer", help="serve the dev keys' JWKS over HTTP")
    p.add_argument("--keys-dir", default=DEFAULT_KEYS_DIR)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790)
    p.set_defaults(func=dev_issuer)

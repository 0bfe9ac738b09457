"""``samtykke-gateway mint`` and ``dev-issuer``: the offline dev kit on the command line.

Dev keys are generated on first use and kept in ``--keys-dir`` (default ``.samtykke-dev/``,
mode 0700, git-ignored), so tokens minted by one command verify against the JWKS that
``dev-issuer`` serves from another. They are development keys: never commit them, never
configure them in a ``tt02``/``prod`` profile.
"""

from __future__ import annotations

import datetime as dt

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from samtykke_gateway.dev.issuer import DevIssuer, DevKey

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
    """Print dev-signed tokens as ready-made HTTP header lines (``curl -H "$(sed -n 1p f)"``).

    ``altinn3``: ``Authorization: Bearer <Maskinporten token with the consent inside>``;
    ``maskinporten``: the same without a consent; ``altinn2`` (legacy): ``AltinnSamtykke:
    <consent token>``, preceded by the ``Authorization`` line with ``--pair``. ``--raw`` prints
    the bare tokens instead, one per line in the same order (for ``explain TOKEN``).
    """
    issuer = load_dev_issuer(args.keys_dir)
    metadata = _metadata_pairs(args.metadata or [])
    aud = {"aud": args.audience} if getattr(args, "audience", None) else None
    lines: list[tuple[str, str]] = []  # (header name, token)
    if args.kind == "altinn2":
        suffix = "".join(f"_{k}={v}" for k, v in metadata.items())
        services = [f"{s}{suffix}" for s in args.service]
        consent = issuer.mint_altinn2(
            subject=args.subject, consumer=args.consumer, services=services, supplier=args.supplier,
            lifetime_seconds=args.lifetime,
        )
        if args.pair:
            bearer = issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                              lifetime_seconds=max(args.lifetime, 120), claims=aud)
            lines.append(("Authorization", f"Bearer {bearer}"))
        lines.append(("AltinnSamtykke", consent))
    elif args.kind == "maskinporten":
        token = issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                         lifetime_seconds=args.lifetime, claims=aud)
        lines.append(("Authorization", f"Bearer {token}"))
    else:
        now = dt.datetime.now(dt.UTC)
        details = [
            DevIssuer.altinn3_consent(
                subject=args.subject, consumer=args.recipient or args.consumer,
                rights=[(r, metadata) for r in args.resource], actions=args.action,
                handled_by=args.handled_by,
                valid_to=(now + dt.timedelta(days=args.consent_valid_days)).isoformat().replace("+00:00", "Z"),
            )
        ]
        token = issuer.mint_maskinporten(consumer=args.consumer, scope=args.scope, supplier=args.supplier,
                                         authorization_details=details, lifetime_seconds=args.lifetime, claims=aud)
        lines.append(("Authorization", f"Bearer {token}"))
    for name, value in lines:
        if args.raw:
            print(value.removeprefix("Bearer "))
        else:
            print(f"{name}: {value}")
    return 0


def dev_issuer_command(args: argparse.Namespace) -> int:
    """Serve the dev keys' JWKS (``/altinn/jwk``, ``/maskinporten/jwk``) and RFC 8414 metadata."""
    import uvicorn

    issuer = load_dev_issuer(args.keys_dir)
    print(f"dev issuer on http://{args.host}:{args.port}/altinn/jwk and /maskinporten/jwk", file=sys.stderr)
    uvicorn.run(issuer.asgi_app(), host=args.host, port=args.port, log_level="warning")
    return 0


#: ``mint --lifetime`` default: long enough to paste a token into a curl by hand. Tests that
#: need short-lived tokens pass ``--lifetime`` (an Altinn 2 consent token lives 30 s in Altinn).
DEFAULT_MINT_LIFETIME_SECONDS = 3600


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to each option's help, except where the help already says it
    or there is no default to show (an unset option, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def add_dev_parsers(sub: Any, *, mint: Callable[..., int], dev_issuer: Callable[..., int]) -> None:
    p = sub.add_parser(
        "mint",
        help="print dev-signed tokens as header lines (Altinn 3 consent in Maskinporten; Altinn 2 legacy)",
        description="Print dev-signed tokens as HTTP header lines for curl -H: 'Authorization: Bearer ...' "
                    "(altinn3: the consent inside the Maskinporten token; maskinporten: no consent) or, "
                    "for altinn2 (legacy), 'AltinnSamtykke: ...' with the Authorization line first "
                    "when --pair is given. Keys are shared with dev-issuer through --keys-dir.",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("kind", choices=["altinn3", "maskinporten", "altinn2"],
                   help="altinn3: Maskinporten token carrying an Altinn 3 consent; altinn2: legacy consent token")
    p.add_argument("--keys-dir", default=DEFAULT_KEYS_DIR,
                   help="where the dev keys live (created on first use; dev-issuer must use the same)")
    p.add_argument("--subject", default="01029413157", help="data subject: person id (11) or org number (9)")
    p.add_argument("--consumer", default="999999999", help="consumer org number")
    p.add_argument("--supplier", default=None, help="supplier org number acting for the consumer (default: no supplier)")
    p.add_argument("--scope", default="skatteetaten:inntekt", help="Maskinporten scope")
    p.add_argument("--audience", default=None, help="aud claim of the Maskinporten token, to try [issuers.*] audience (default: no aud)")
    p.add_argument("--resource", action="append", default=None,
                   help="altinn3: resource id, repeatable (default: ske-innrapportert-inntekt)")
    p.add_argument("--service", action="append", default=None,
                   help="altinn2: service code_edition, repeatable (default: 4804_210607)")
    p.add_argument("--metadata", action="append", help="key=value consent metadata, repeatable (default: none)")
    p.add_argument("--action", action="append", default=None,
                   help="altinn3: the rights' action, repeatable (Digdir: consent, Altinn: read, migrated: Read "
                        "and Write) (default: consent)")
    p.add_argument("--recipient", default=None,
                   help="altinn3: the consent's 'to' when it differs from the caller (another org's consent, or "
                        "the recipient of a consent the caller handles) (default: the --consumer)")
    p.add_argument("--handled-by", default=None,
                   help="altinn3: the consent's handledBy org number (default: none)")
    p.add_argument("--consent-valid-days", type=float, default=1.0,
                   help="altinn3: the consent's validTo, days from now (negative: an expired consent)")
    p.add_argument("--lifetime", type=int, default=DEFAULT_MINT_LIFETIME_SECONDS,
                   help="token lifetime, seconds (long enough to type a curl by hand)")
    p.add_argument("--pair", action="store_true", help="altinn2: also print the Authorization line of the A2 pair")
    p.add_argument("--raw", action="store_true", help="print bare tokens, one per line, instead of header lines")
    p.set_defaults(func=mint)

    def fix_defaults(ns: argparse.Namespace) -> None:
        ns.service = ns.service or ["4804_210607"]
        ns.resource = ns.resource or ["ske-innrapportert-inntekt"]
        ns.action = ns.action or ["consent"]

    p.set_defaults(_fix=fix_defaults)

    p = sub.add_parser("dev-issuer", help="serve the dev keys' JWKS over HTTP", formatter_class=_DefaultsFormatter)
    p.add_argument("--keys-dir", default=DEFAULT_KEYS_DIR)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8790)
    p.set_defaults(func=dev_issuer)

"""``samtykke-gateway revoke`` and ``samtykke-gateway state``: operate the consent state.

::

    samtykke-gateway revoke --config FILE CONSENT_ID [CONSENT_ID ...]
    samtykke-gateway state status --config FILE CONSENT_ID
    samtykke-gateway state clear-claim --config FILE CONSENT_ID
    samtykke-gateway state confirm-reset --config FILE

``revoke`` writes to the shared backend when ``[state] url`` is Redis (every replica sees it on
its next request) and appends to ``[state] revocation_file`` when one is configured (replicas
re-read it within a second). With ``memory://`` and no revocation file there is nowhere another
process can reach: the command refuses (exit 2). Ids are stored lower-case.

``state clear-claim`` removes a one-time consent's dangling *claim* (shown as ``claimed`` by
``state status`` while no request is in flight), never a ``spent`` mark: use it only when the
disclosure log shows the consent was not delivered (a replica died mid-request, or the state
backend failed while giving the claim back). Redis only.

``state confirm-reset`` ends the fail-closed state after Redis lost its data (503
``consent_state_reset``, see :mod:`.redis_backend`): it writes a new generation marker that
every replica adopts on its next request. Spent one-time consents and revocations recorded
before the reset are gone: check the disclosure log for one-time consents already delivered and
re-run ``revoke`` for revocations still needed before confirming. With a usable generation in
place it changes nothing (exit 1). Also the one step for a deployment whose disclosure log
already has records when it first meets a Redis without a marker (an upgrade, a new Redis).

Exit codes: 0 done, 1 the backend or file could not be written, 2 usage/config error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from samtykke_gateway.exceptions import StateUnavailableError
from samtykke_gateway.state.revocation_file import append_revocations, normalize_consent_id

__all__ = ["add_state_parsers"]


def add_state_parsers(sub: Any) -> None:
    """Add ``revoke`` and ``state`` to the CLI's sub-parsers."""
    p = sub.add_parser("revoke", help="revoke consent ids on every replica (Redis and/or revocation file)")
    p.add_argument("--config", required=True)
    p.add_argument("consent_ids", nargs="+", metavar="CONSENT_ID")
    p.set_defaults(func=_usage_errors(_cmd_revoke))

    p = sub.add_parser("state", help="inspect the consent state")
    ssub = p.add_subparsers(dest="state_command", required=True)
    s = ssub.add_parser("status", help="is a consent revoked / spent")
    s.add_argument("--config", required=True)
    s.add_argument("consent_id", metavar="CONSENT_ID")
    s.set_defaults(func=_usage_errors(_cmd_status))
    s = ssub.add_parser("clear-claim", help="drop a dangling one-time claim (never a spent mark)")
    s.add_argument("--config", required=True)
    s.add_argument("consent_id", metavar="CONSENT_ID")
    s.set_defaults(func=_usage_errors(_cmd_clear_claim))
    s = ssub.add_parser("confirm-reset", help="after Redis lost its data: start a new consent-state generation")
    s.add_argument("--config", required=True)
    s.set_defaults(func=_cmd_confirm_reset)


class _NotAConsentId(ValueError):
    """A CONSENT_ID argument is not a consent id (a usage error, not a config error)."""


def _ids(raw: list[str]) -> list[str]:
    out = []
    for number, value in enumerate(raw, start=1):
        v = normalize_consent_id(value)
        if v is None:  # the value is not echoed: it could be anything pasted, a person id too
            which = f"CONSENT_ID {number}" if len(raw) > 1 else "CONSENT_ID"
            raise _NotAConsentId(f"{which} is not a consent id (a GUID such as 616d2c43-17f9-4cc1-9257-41cdda157f11;"
                                 " braces are allowed)")
        out.append(v)
    return out


def _usage_errors(command: Any) -> Any:
    """Print a bad CONSENT_ID and exit 2, instead of letting it pass for an invalid config."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except _NotAConsentId as exc:
            print(f"samtykke-gateway: {exc}", file=sys.stderr)
            return 2
    return run


def _cmd_revoke(args: argparse.Namespace) -> int:
    from samtykke_gateway.config import load_config

    config = load_config(args.config)
    ids = _ids(args.consent_ids)
    shared = config.state_url.startswith(("redis://", "rediss://"))
    if not shared and not config.revocation_file:
        print("state.url is memory:// and no state.revocation_file is set: a running gateway cannot "
              "be reached. Configure one of them.", file=sys.stderr)
        return 2
    if not config.check_revocation:
        print("state.check_revocation is false: revocations would not be enforced.", file=sys.stderr)
        return 2
    written = []
    if shared:
        try:
            new = asyncio.run(_revoke_in_backend(config, ids))
        except StateUnavailableError:
            print("the state backend is unreachable; nothing revoked there", file=sys.stderr)
            return 1
        written.append(f"{new} new in the shared state")
    if config.revocation_file:
        try:
            new = append_revocations(config.revocation_file, ids)
        except OSError as exc:
            print(f"cannot write the revocation file: {exc.strerror}", file=sys.stderr)
            return 1
        written.append(f"{new} new in {config.revocation_file}")
    print(f"revoked {len(ids)} consent id(s): " + "; ".join(written))
    return 0


async def _revoke_in_backend(config: Any, ids: list[str]) -> int:
    from samtykke_gateway.state import open_backend

    backend = open_backend(config)
    try:
        return await backend.revoke(ids)
    finally:
        await backend.close()


def _cmd_status(args: argparse.Namespace) -> int:
    from samtykke_gateway.config import load_config
    from samtykke_gateway.state import open_backend
    from samtykke_gateway.state.revocation_file import RevocationFile

    config = load_config(args.config)
    (cid,) = _ids([args.consent_id])

    async def run() -> tuple[bool, str | None]:
        backend = open_backend(config)
        try:
            return await backend.revoked(cid), await backend.spent(cid)
        finally:
            await backend.close()

    if not config.state_url.startswith(("redis://", "rediss://")):
        print("note: memory:// state lives inside each gateway process; only the file is visible here")
        revoked, spent = False, None
    else:
        try:
            revoked, spent = asyncio.run(run())
        except StateUnavailableError:
            print("the state backend is unreachable", file=sys.stderr)
            return 1
    if config.revocation_file:
        f = RevocationFile(config.revocation_file)
        f.load()
        if f.error is None and f.check(cid):
            revoked = True
    print(f"revoked: {'yes' if revoked else 'no'}; one-time: {spent or 'unused'}")
    return 0


def _cmd_clear_claim(args: argparse.Namespace) -> int:
    from samtykke_gateway.config import load_config
    from samtykke_gateway.state import open_backend

    config = load_config(args.config)
    (cid,) = _ids([args.consent_id])
    if not config.state_url.startswith(("redis://", "rediss://")):
        print("memory:// state lives inside each gateway process; restart it instead", file=sys.stderr)
        return 2

    async def run() -> bool:
        backend = open_backend(config)
        try:
            return await backend.clear_claim(cid)
        finally:
            await backend.close()

    try:
        cleared = asyncio.run(run())
    except StateUnavailableError:
        print("the state backend is unreachable", file=sys.stderr)
        return 1
    print("claim cleared" if cleared else "no claim to clear (unused, or spent: a spent mark is never cleared)")
    return 0 if cleared else 1


def _cmd_confirm_reset(args: argparse.Namespace) -> int:
    from samtykke_gateway.config import load_config
    from samtykke_gateway.state import open_backend
    from samtykke_gateway.state.redis_backend import RedisBackend

    config = load_config(args.config)
    backend = open_backend(config)
    if not isinstance(backend, RedisBackend):
        print("memory:// state lives inside each gateway process: nothing to confirm", file=sys.stderr)
        return 2

    async def run() -> tuple[bool, Any, Any]:
        try:
            before = await backend.generation()
            written, now = await backend.confirm_reset()
            return written, before, now
        finally:
            await backend.close()

    try:
        written, before, now = asyncio.run(run())
    except StateUnavailableError:
        print("the state backend is unreachable", file=sys.stderr)
        return 1
    if not written:
        print(f"no reset to confirm: {now.describe()}")
        return 1
    print(f"was: {before.describe() if before is not None else 'no generation marker'}")
    print(f"consent state reset confirmed: {now.describe()}. One-time consents spent and revocations "
          "recorded before the reset are not known to the gateway: the disclosure log shows the deliveries; "
          "re-run `samtykke-gateway revoke` for revocations still needed.")
    return 0


def durability_line(config: Any) -> tuple[str, str] | None:
    """(verdict, detail) of the configured Redis's persistence for ``check-config``; ``None``
    for memory://. Verdict ``ok`` / ``warning`` / ``unknown`` (unreachable included)."""
    from samtykke_gateway.state import open_backend
    from samtykke_gateway.state.redis_backend import RedisBackend

    backend = open_backend(config)
    if not isinstance(backend, RedisBackend):
        return None

    async def run() -> dict[str, str]:
        try:
            try:
                marker = await backend.generation()  # read only: check-config never writes
            except StateUnavailableError:
                return {"verdict": "unknown", "detail": "Redis unreachable"}
            result = await backend.durability()
            if marker is not None and marker.kind == "reset":
                result = {"verdict": "warning", "detail": "the consent state was reset and no operator has "
                          "confirmed it (`samtykke-gateway state confirm-reset`); " + result["detail"]}
            return result
        finally:
            await backend.close()

    async def bounded() -> dict[str, str]:
        try:
            return await asyncio.wait_for(run(), 5.0)  # a name that never resolves, a silent host
        except TimeoutError:
            return {"verdict": "unknown", "detail": "Redis did not answer within 5 s"}

    result = asyncio.run(bounded())
    return result["verdict"], result["detail"]

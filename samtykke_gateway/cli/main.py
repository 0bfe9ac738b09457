"""``samtykke-gateway`` command line.

::

    samtykke-gateway serve --config FILE [--host 127.0.0.1] [--port 8080]
    samtykke-gateway check-config --config FILE
    samtykke-gateway demo
    samtykke-gateway dev-config > dev.toml  (a config for dev-issuer + example-upstream)
    samtykke-gateway mint altinn3|maskinporten|altinn2 ... (header lines; dev keys in --keys-dir)
    samtykke-gateway dev-issuer [--port 8790]  (serves the dev keys' JWKS)
    samtykke-gateway explain TOKEN [--consent TOKEN] [--config FILE] [--path PATH] [--header 'N: V']...
    samtykke-gateway audit verify|export|purge ...
    samtykke-gateway revoke --config FILE CONSENT_ID...
    samtykke-gateway state status --config FILE CONSENT_ID
    samtykke-gateway state confirm-reset --config FILE

Exit codes: 0 ok, 1 a check failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from samtykke_gateway.config_text import url_without_password
from samtykke_gateway.exceptions import ConfigError

if TYPE_CHECKING:
    from samtykke_gateway.config import GatewayConfig, RouteConfig

__all__ = ["main"]


def _cmd_check_config(args: argparse.Namespace) -> int:
    from samtykke_gateway.config import load_config, memory_state_warning

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    print(f"config OK: {args.config} (profile {config.profile})")
    for name, issuer in config.issuers.items():
        where = issuer.jwks_url or issuer.metadata_url
        print(f"  issuer {name:<13} iss={issuer.issuer}  keys={where}  algs={','.join(issuer.algorithms)}")
        if issuer.audiences:
            print(f"  {'':<20} aud must name one of: {', '.join(issuer.audiences)}")
        if issuer.max_token_age_seconds is not None:
            print(f"  {'':<20} tokens honoured up to {issuer.max_token_age_seconds:g} s after iat")
    print(f"  upstream           {(config.upstream_url and url_without_password(config.upstream_url)) or '(none: middleware only)'}")
    if config.upstream_url and "@" in urlsplit(config.upstream_url).netloc:
        print(f"  {'':<19}note: the user:password in upstream.url is never sent to the upstream")
    if config.upstream_url:
        print(f"  {'':<19}timeouts: {config.upstream_timeout_seconds:g} s per read, "
              f"{config.upstream_deadline_seconds:g} s per exchange; scoped bodies up to {config.max_body_bytes} B")
    _print_unmatched(config)
    from samtykke_gateway.audit import open_store

    print(f"  disclosure log     {open_store(config.audit_url).url_for_display}")
    _print_state(config)
    for name, package in sorted(config.rights_packages.items()):
        consumers = config.package_consumers.get(name)
        only = f" (only for {', '.join(sorted(consumers))})" if consumers else ""
        print(f"  rights package {name}{only}: releases {len(package.fields)} field path(s), nothing else")
        subtrees = [f[:-2] for f in package.fields if f.endswith(".*")]
        for field in package.fields:
            if field.endswith(".*"):
                print(f"      field  {field}   (the whole subtree, including fields the upstream adds later)")
                continue
            inside = [t for t in subtrees if field.startswith((t + ".", t + "["))]
            note = f"   (WARNING: already released whole by {inside[0]}.*)" if inside else ""
            print(f"      field  {field}{note}")
        for row_filter in package.row_filters:
            print(f"      filter {row_filter}")
    print("  routes:")
    for route in config.routes:
        methods = ",".join(sorted(route.methods))
        print(f"    {route.name}: {methods} {route.path}")
        party = f" ({route.subject.party} only)" if route.subject.party else ""
        print(f"      scope {route.scope}; subject from {route.subject.source} '{route.subject.name}'{party}")
        if route.altinn2_services:
            print(f"      Altinn 2 service {', '.join(route.altinn2_services)}")
        if route.altinn3_resources or route.migrated_resources:
            print(f"      Altinn 3 resources {', '.join(route.altinn3_resources + route.migrated_resources)}")
            _print_altinn3_rules(config, route)
        if route.year:
            print(f"      {route.year.param} must be a consented {route.year.metadata}")
        if route.period:
            print(f"      {route.period.from_param}..{route.period.to_param} inside the consented period")
        if route.rights_package:
            print(f"      rights package {route.rights_package}")
        elif route.rights_package_param:
            pairs = ", ".join(f"{k}->{v}" for k, v in route.rights_package_map.items())
            print(f"      rights package by {{{route.rights_package_param}}}: {pairs}")
        else:
            print("      unscoped (body streams through)")
        if route.response_subject is not None:
            path = ".".join("[]" if step is None else step for step in route.response_subject).replace(".[]", "[]")
            print(f"      the answer must name the subject at {path}")
        elif route.scoped:
            print("      the answer is not checked to be about the subject (response_subject unset)")
        if route.subject.needs_body:
            print(f"      JSON body up to {config.max_request_body_bytes} B within "
                  f"{config.request_body_timeout_seconds:g} s")
        if route.one_time:
            print("      one-time consent")
        if route.daily_limit:
            print(f"      at most {route.daily_limit} deliveries per consent per day")
    warning = memory_state_warning(config)
    if warning:
        print(f"WARNING: {warning}")
    return 0


def _print_unmatched(config: GatewayConfig) -> None:
    """Which paths the routes protect and what happens to a path no route names, per form."""
    prefixes = ", ".join("/" + "/".join(p) for p in config.protected_prefixes) or "(none)"
    print(f"  protected prefixes {prefixes} (each with every path below it)")
    under = "under a protected prefix: 404 no_route"
    mode = config.unmatched
    if mode is None:
        print(f"  unmatched paths    middleware: {under}, elsewhere passed to the app unchecked "
              "(gateway.unmatched unset = 'pass_outside_protected'); sidecar: 404 no_route")
    elif mode == "deny":
        print("  unmatched paths    404 no_route (gateway.unmatched = 'deny')")
    elif mode == "pass":
        print("  unmatched paths    passed to the app unchecked, also under a protected prefix "
              "(gateway.unmatched = 'pass'; middleware form only: `serve` refuses it)")
    else:
        print(f"  unmatched paths    {under}, elsewhere passed to the app unchecked "
              "(gateway.unmatched = 'pass_outside_protected'; middleware form only: `serve` refuses it)")


def _print_altinn3_rules(config: GatewayConfig, route: RouteConfig) -> None:
    """A route's Altinn 3 rules: accepted actions, supplier delegation sources, the handler
    rule, the token-age bound and the route's own error codes (docs/protocol.md §3.3, §4)."""
    print(f"      a right covers it with action {' or '.join(route.accepted_actions)} (any case)")
    writes = sorted(route.methods & {"PUT", "PATCH", "DELETE"})
    reads = sorted(set(route.accepted_actions) & {"consent", "read"})
    if writes and reads:
        print(f"      WARNING: the route takes {', '.join(writes)} but a consent to {' or '.join(reads)} covers it;"
              " set accepted_actions to the action your resource's policy grants for that")
    if config.altinn3_delegation_sources:
        sources = ", ".join(config.altinn3_delegation_sources)
        print(f"      supplier tokens: delegation_source {sources} (trailing '/' ignored)")
    else:
        print("      supplier tokens refused (no delegation_source accepted)")
    if route.accept_handled_by:
        print("      handler tokens accepted: consumer == handledBy (to stays the recipient; both recorded)")
    else:
        print("      handler tokens refused (consumer must be the consent's 'to'; accept_handled_by = false)")
    issuer = config.issuers.get("maskinporten")
    bounds = [b for b in (issuer.max_token_age_seconds if issuer else None, route.max_token_age_seconds)
              if b is not None]
    if bounds:
        print(f"      Maskinporten token honoured up to {min(bounds):g} s after iat")
    if route.error_codes:
        if config.error_style == "skatteetaten":
            codes = ", ".join(f"{kind} {code}" for kind, code in route.error_codes.items())
            print(f"      error codes: {codes}")
        else:
            print("      note: error_codes apply with gateway.error_style = 'skatteetaten' only")


def _print_state(config: GatewayConfig) -> None:
    """The ``[state]`` section: where one-time use, limits and revocations live."""
    if config.state_url.startswith("memory://"):
        backend = "memory:// (inside each process: not shared by workers or replicas, lost on restart)"
    else:
        backend = f"{url_without_password(config.state_url)} (shared; key prefix {config.state_key_prefix})"
    print(f"  consent state      {backend}")
    if not config.check_revocation:
        print(f"  {'':<19}revocations NOT checked (state.check_revocation = false)")
    print(f"  {'':<19}revocation file: {config.revocation_file or '(none)'}")
    feed = config.state_feed
    if feed is None:
        print(f"  {'':<19}revocation feed: (none)")
    else:
        print(f"  {'':<19}revocation feed: {feed.kind} {url_without_password(feed.url)} every {feed.interval_seconds:g} s"
              f" (services {', '.join(feed.services) or '-'}; stale after "
              f"{f'{feed.max_staleness_seconds:g} s' if feed.max_staleness_seconds else 'never'})")
    print(f"  {'':<19}reused jti: {config.jti_replay}")
    from samtykke_gateway.cli.state import durability_line

    durability = durability_line(config)
    if durability is not None:
        verdict, detail = durability
        print(f"  {'':<19}Redis durability: {verdict.upper() if verdict != 'ok' else 'ok'}: {detail}")
        if verdict == "warning":  # unknown (unreachable here, CONFIG refused) stays on the line above
            print(f"WARNING: Redis durability: {detail} (docs/protocol.md §8; docs/operations.md, consent state in Redis)")


def _cmd_dev_config(args: argparse.Namespace) -> int:
    from samtykke_gateway.cli.demo import demo_config_text

    sys.stdout.write(demo_config_text(issuer_url=args.issuer_url.rstrip("/"), upstream_url=args.upstream_url,
                                      audit_url=args.audit_url, absolute_files=True))
    return 0


def _cmd_example_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from samtykke_gateway.dev.examples import ExampleUpstream

    print(f"example upstream (published example data) on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(ExampleUpstream(compress=args.compress).app, host=args.host, port=args.port, log_level="warning")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from samtykke_gateway.sidecar.serve import serve

    return serve(args.config, host=args.host, port=args.port, workers_note=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from samtykke_gateway.cli.demo import run_demo

    if args.audit_path is not None and not Path(args.audit_path).resolve().parent.is_dir():
        print(f"--audit-path: directory {Path(args.audit_path).resolve().parent} does not exist", file=sys.stderr)
        return 2
    return run_demo(audit_path=args.audit_path, body_lines=args.body_lines)


def _cmd_mint(args: argparse.Namespace) -> int:
    from samtykke_gateway.dev.kit import mint_command

    return mint_command(args)


def _cmd_dev_issuer(args: argparse.Namespace) -> int:
    from samtykke_gateway.dev.kit import dev_issuer_command

    return dev_issuer_command(args)


def _cmd_explain(args: argparse.Namespace) -> int:
    from samtykke_gateway.cli.explain import explain_command

    return explain_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samtykke-gateway", description="Altinn consent enforcement point")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the sidecar reverse proxy (uvicorn)")
    p.add_argument("--config", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and print its routes")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("demo", help="run dev issuer + example upstream + sidecar and play a bank")
    p.add_argument("--audit-path", default=None,
                   help="the disclosure log's SQLite file, kept after the demo (default: .samtykke-demo/disclosures.db)")
    p.add_argument("--body-lines", type=int, default=40, help="lines of each scoped body to print")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "dev-config",
        help="print a config for dev-issuer + example-upstream (profile custom), to try serve by hand",
    )
    p.add_argument("--issuer-url", default="http://127.0.0.1:8790", help="where dev-issuer listens")
    p.add_argument("--upstream-url", default="http://127.0.0.1:8081", help="where example-upstream listens")
    p.add_argument("--audit-url", default="sqlite:///dev-disclosures.db",
                   help="disclosure log (a relative SQLite path is relative to the config file)")
    p.set_defaults(func=_cmd_dev_config)

    p = sub.add_parser("example-upstream", help="serve the published example data as a data API (for trials)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--compress", choices=["gzip", "deflate", "br"], default=None)
    p.set_defaults(func=_cmd_example_upstream)

    from samtykke_gateway.dev.kit import add_dev_parsers

    add_dev_parsers(sub, mint=_cmd_mint, dev_issuer=_cmd_dev_issuer)

    try:
        from samtykke_gateway.cli.explain import add_explain_parser

        add_explain_parser(sub, _cmd_explain)
    except ImportError:  # pragma: no cover - explain is optional during development
        pass
    from samtykke_gateway.cli.state import add_state_parsers

    add_state_parsers(sub)
    try:
        from samtykke_gateway.cli.audit import add_audit_parser

        add_audit_parser(sub)
    except ImportError:  # pragma: no cover
        pass
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samtykke-gateway`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if hasattr(args, "_fix"):
        args._fix(args)
    if args.command == "audit":
        from samtykke_gateway.cli.audit import run_audit

        try:
            return run_audit(args)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

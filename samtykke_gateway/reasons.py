"""The reason-code catalogue: every ``reason`` the gateway can emit, with its HTTP status.

A reason code is public: it is in the error body (``reason`` / ``arsak``), the disclosure record
and the ``samtykke_decisions_total`` metric's ``reason`` label. Codes are stable; this table is the
one place that lists them (``docs/reasons.md`` is generated from it by :func:`markdown_table`, and
``tests/test_reasons.py`` fails when the code emits a code that is not here or the doc is stale).

``forms`` names the deployment forms that emit a code: ``middleware`` (the ASGI
:class:`~samtykke_gateway.ConsentMiddleware` in front of an app), ``sidecar`` (``serve``: the
middleware around the upstream proxy), ``cli`` (``explain`` and the ``audit`` commands).
``status`` is ``None`` for the allow-side record reasons, whose status is the upstream's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CATALOGUE", "REASONS", "Reason", "markdown_table"]


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason code: ``code`` (snake_case), HTTP ``status`` (``None``: the upstream's), one
    sentence of ``meaning`` and the deployment ``forms`` that emit it."""

    code: str
    status: int | None
    meaning: str
    forms: tuple[str, ...] = ("middleware", "sidecar")


_SIDECAR = ("sidecar",)
_ALL = ("middleware", "sidecar", "cli")

#: Every reason code, grouped by status.
CATALOGUE: tuple[Reason, ...] = (
    # allow-side disclosure records (the upstream's status)
    Reason("ok", None, "released: the upstream answered below 400 and the answer was scoped or streamed"),
    Reason("upstream_status", None, "the upstream answered 400 or above; its answer was passed on, nothing scoped;"
                                    " not a disclosure (audit export lists it under allowed_without_data)"),
    Reason("no_data_released", None, "allowed, but the answer carried no data from the source (HEAD, 204, 304, a 3xx"
                                     " with the generic body); not a disclosure (audit export: allowed_without_data)"),
    Reason("stream_end", None, "second record of a streamed answer: the stream completed"),
    Reason("stream_cut", None, "second record of a streamed answer: the stream was cut (``detail`` says why)"),
    # 400
    Reason("bad_request", 400, "the request is malformed (default of BadRequestError)", _ALL),
    Reason("ambiguous_framing", 400, "Content-Length and Transfer-Encoding disagree, or the body does not match Content-Length", _ALL),
    Reason("ambiguous_header", 400, "a header the gateway checks is repeated or nominated by Connection", _ALL),
    Reason("ambiguous_parameter", 400, "a parameter or JSON body member names the subject, a path parameter or a governed parameter twice over", _ALL),
    Reason("ambiguous_consent", 400, "more than one consent is presented (token claim and consent header)", _ALL),
    Reason("bad_parameter", 400, "a year/period parameter is malformed or empty", _ALL),
    Reason("bad_path", 400, "the path is too long, not ASCII/UTF-8, badly percent-encoded, or climbs above the root", _ALL),
    Reason("bad_query", 400, "the query string is too long, malformed, or has control characters", _ALL),
    Reason("bad_request_body", 400, "the ASGI server sent an unexpected request message"),
    Reason("body_not_json", 400, "a body-subject route's request body is not a JSON object", _ALL),
    Reason("duplicate_header", 400, "more than one Authorization or consent token header", _ALL),
    Reason("duplicate_member", 400, "a member name is repeated in the JSON request body", _ALL),
    Reason("duplicate_parameter", 400, "a governed query parameter is repeated", _ALL),
    Reason("parameter_missing", 400, "the route's year parameter is missing", _ALL),
    Reason("subject_malformed", 400, "the data subject is not an 11-digit person id or 9-digit org number,"
                                     " or not of the route's subject party", _ALL),
    Reason("subject_missing", 400, "the request does not name exactly one data subject", _ALL),
    Reason("too_many_parameters", 400, "the query has more than 100 parameters", _ALL),
    Reason("unexpected_body", 400, "a GET or HEAD request carries a body", _ALL),
    # 401
    Reason("unauthenticated", 401, "the bearer cannot be authenticated (default of AuthenticationError)"),
    Reason("missing_token", 401, "no Maskinporten bearer token, or not the Bearer scheme", _ALL),
    Reason("invalid_token", 401, "the token is invalid (default of InvalidTokenError)"),
    Reason("malformed_token", 401, "the token is not a well-formed compact JWS, or is too large", _ALL),
    Reason("alg_not_allowed", 401, "the token's alg is not allowed for its issuer", _ALL),
    Reason("crit_not_supported", 401, "the token header has a crit parameter", _ALL),
    Reason("unknown_key", 401, "the token names no key, or a key the issuer's JWKS does not have", _ALL),
    Reason("bad_signature", 401, "the signature does not verify", _ALL),
    Reason("wrong_issuer", 401, "the iss claim is not the configured issuer", _ALL),
    Reason("wrong_audience", 401, "the aud claim does not name this data source", _ALL),
    Reason("token_expired", 401, "the token's exp is past", _ALL),
    Reason("token_not_yet_valid", 401, "the token's nbf/iat is in the future", _ALL),
    Reason("bad_time_claim", 401, "exp/nbf/iat is missing or not a NumericDate", _ALL),
    Reason("bad_maskinporten_claims", 401, "the Maskinporten token's claims are malformed (consumer, scope, or a claim the model declares: supplier, jti, ...)", _ALL),
    Reason("token_too_old", 401, "the Maskinporten token is older than max_token_age_seconds (or has no iat where a bound is set)", _ALL),
    Reason("token_replayed", 401, "this access token (jti) has already been used"),
    Reason("unforwardable_claim", 401, "a claim to forward as a header has characters a header cannot carry", _ALL),
    # 403: not about the consent
    Reason("forbidden", 403, "refused, not about the consent (default of ForbiddenError)"),
    # 403: the consent (docs/protocol.md §4: never 401, never a WWW-Authenticate challenge)
    Reason("missing_consent_token", 403, "the route needs a consent and none is presented", _ALL),
    Reason("bad_consent_claims", 403, "the consent (Altinn 3 authorization_details or Altinn 2 consent token claims) is malformed", _ALL),
    Reason("test_token_refused", 403, "an Altinn 2 test-generator consent token (actual_iss) under the prod profile", _ALL),
    Reason("consent_token_invalid", 403, "the Altinn 2 consent token fails verification (fallback of the consent_token_* codes)", _ALL),
    Reason("consent_token_malformed", 403, "the Altinn 2 consent token is not a well-formed compact JWS, or is too large", _ALL),
    Reason("consent_token_alg_not_allowed", 403, "the Altinn 2 consent token's alg is not allowed", _ALL),
    Reason("consent_token_crit_not_supported", 403, "the Altinn 2 consent token header has a crit parameter", _ALL),
    Reason("consent_token_unknown_key", 403, "the Altinn 2 consent token names a key Altinn's JWKS does not have", _ALL),
    Reason("consent_token_bad_signature", 403, "the Altinn 2 consent token's signature does not verify", _ALL),
    Reason("consent_token_wrong_issuer", 403, "the Altinn 2 consent token's iss is not altinn.no", _ALL),
    Reason("consent_token_wrong_audience", 403, "the Altinn 2 consent token's aud does not name this data source", _ALL),
    Reason("consent_token_expired", 403, "the Altinn 2 consent token's exp is past", _ALL),
    Reason("consent_token_not_yet_valid", 403, "the Altinn 2 consent token's nbf/iat is in the future", _ALL),
    Reason("consent_token_bad_time_claim", 403, "the Altinn 2 consent token's exp/nbf/iat is missing or malformed", _ALL),
    Reason("consent_action_not_accepted", 403, "the consent names the route's resource only under actions the route does not accept (accepted_actions)", _ALL),
    Reason("handled_by_not_accepted", 403, "the caller is the consent's handledBy and the route has not opted in (accept_handled_by)", _ALL),
    Reason("consent_does_not_cover_request", 403, "the consent does not cover the request (default of InsufficientConsentError)", _ALL),
    Reason("scope_missing", 403, "the access token lacks the route's scope", _ALL),
    Reason("altinn2_not_accepted", 403, "Altinn 2 consents are not accepted on this route", _ALL),
    Reason("consumer_mismatch", 403, "the consent was given to another organisation", _ALL),
    Reason("supplier_mismatch", 403, "the consent names another supplier, or no trusted delegation source", _ALL),
    Reason("subject_mismatch", 403, "the consent was given by another data subject", _ALL),
    Reason("consent_expired", 403, "the consent is no longer valid", _ALL),
    Reason("consent_not_yet_valid", 403, "the consent was given in the future", _ALL),
    Reason("service_not_consented", 403, "the consent does not cover this Altinn 2 service", _ALL),
    Reason("resource_not_consented", 403, "the consent does not cover this resource", _ALL),
    Reason("metadata_missing", 403, "the consent lacks the year/period metadata the route needs", _ALL),
    Reason("metadata_out_of_range", 403, "the requested year/period is outside the consented one", _ALL),
    Reason("rights_package_not_allowed", 403, "the consumer has no agreement for this rights package", _ALL),
    Reason("consent_spent", 403, "the one-time consent has already been used"),
    Reason("consent_revoked", 403, "the consent has been revoked"),
    # 404, 405, 408, 413, 415, 429, 499
    Reason("no_route", 404, "no route matches the path", _ALL),
    Reason("unknown_rights_package", 404, "the route's rights-package parameter names no package", _ALL),
    Reason("method_not_allowed", 405, "the path is a route, the method is not (the answer carries Allow)", _ALL),
    Reason("request_body_timeout", 408, "a body-subject route's request body did not arrive in time"),
    Reason("request_body_too_large", 413, "a body-subject route's request body is over the limit", _ALL),
    Reason("unsupported_media_type", 415, "a body-subject route's request body is not JSON", _ALL),
    Reason("usage_limit_reached", 429, "the per-consent daily usage limit is reached"),
    Reason("client_disconnected", 499, "the client left before its request was complete (record only)"),
    Reason("gateway_stopping", None, "a streamed answer was cut because the server shut down (a stream_cut's detail)"),
    # 502, 504
    Reason("upstream_error", 502, "the upstream (protected app) failed or gave no response"),
    Reason("upstream_unreachable", 502, "the upstream refused, is unreachable, or failed TLS", _SIDECAR),
    Reason("upstream_broken", 502, "the upstream connection broke mid-answer", _SIDECAR),
    Reason("upstream_bad_response", 502, "the upstream's answer is not valid HTTP (or its status is outside 200-599)"),
    Reason("upstream_body_not_json", 502, "a scoped route's upstream answer is not JSON"),
    Reason("upstream_body_unexpected_shape", 502, "a scoped route's upstream answer has an unexpected shape"),
    Reason("upstream_body_too_large", 502, "a scoped route's upstream answer is over max_body_bytes"),
    Reason("upstream_bad_encoding", 502, "the upstream's compressed body is corrupt, truncated or has trailing data"),
    Reason("upstream_unknown_encoding", 502, "the upstream used a content encoding the gateway cannot decode"),
    Reason("upstream_subject_mismatch", 502, "the upstream's answer is about another data subject (response_subject)"),
    Reason("upstream_timeout", 504, "the upstream did not answer within the read timeout or the deadline", _SIDECAR),
    # 503
    Reason("gateway_out_of_file_descriptors", 503, "the gateway has no file descriptor left to open the upstream connection (raise ulimit -n)", _SIDECAR),
    Reason("unavailable", 503, "the gateway cannot decide (default of UnavailableError)"),
    Reason("internal_error", 503, "an unexpected error while deciding: denied, nothing released"),
    Reason("keys_unavailable", 503, "no JWKS keys for the issuer (nothing cached, fetch failed)", _ALL),
    Reason("audit_unavailable", 503, "the disclosure log cannot take the record: nothing released"),
    Reason("audit_record_invalid", 503, "a disclosure record cannot be serialised", _ALL),
    Reason("audit_record_corrupt", 503, "a stored disclosure record cannot be read back", _ALL),
    Reason("audit_schema_too_new", 503, "the disclosure store's schema is newer than this gateway", _ALL),
    Reason("state_unavailable", 503, "the consent state backend (Redis) is unreachable"),
    Reason("revocation_feed_stale", 503, "the consent revocation feed is older than max_staleness_seconds"),
    Reason("revocation_file_unreadable", 503, "the revocation file cannot be read"),
    Reason("consent_state_reset", 503, "Redis lost the consent state (generation marker gone or replaced) until an operator runs state confirm-reset"),
)

#: code -> :class:`Reason`.
REASONS: Mapping[str, Reason] = {reason.code: reason for reason in CATALOGUE}


def markdown_table() -> str:
    """``docs/reasons.md``: the catalogue as a Markdown table, in catalogue order."""
    lines = [
        "# Reason codes",
        "",
        "Generated from `samtykke_gateway/reasons.py` by `markdown_table()`; do not edit by hand",
        "(`tests/test_reasons.py` fails when this file and the catalogue differ).",
        "",
        "A reason code is in the error body (`reason`, or `arsak` in the `kode` style), the",
        "disclosure record and the `reason` label of `samtykke_decisions_total`. Status `-`: an",
        "allow-side record whose status is the upstream's own.",
        "",
        "| code | status | meaning | emitted by |",
        "|---|---|---|---|",
    ]
    for reason in CATALOGUE:
        status = "-" if reason.status is None else str(reason.status)
        lines.append(f"| `{reason.code}` | {status} | {reason.meaning} | {', '.join(reason.forms)} |")
    return "\n".join(lines) + "\n"

"""`samtykke-gateway explain`: each check in order, personal data masked, rights shown."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

from samtykke_gateway.cli.main import main
from samtykke_gateway.cli.explain import mask_personal_data
from samtykke_gateway.dev.issuer import DevIssuer

from tests.support import BANK, INCOME_PATH, INCOME_PERSON, OTHER_BANK, a2_headers, a3_headers, tax_base_path


@pytest.fixture
def config_file(tmp_path: Path, issuer_url: str) -> str:
    data = resources.files("samtykke_gateway.dev.data")
    text = data.joinpath("demo.toml").read_text()
    text = text.replace("${ISSUER_URL}", issuer_url).replace("${UPSTREAM_URL}", "http://127.0.0.1:9").replace(
        "${AUDIT_URL}", "memory://"
    )
    shutil.copy(str(data.joinpath("inntekt-sbl-loennsinntekt-beskrivelse.txt")), tmp_path)
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["explain", *argv])
    return code, capsys.readouterr().out


def test_masking() -> None:
    assert mask_personal_data({"OfferedBy": "01029413157", "CoveredBy": "999999999"}) == {
        "OfferedBy": "010294*****", "CoveredBy": "999999999"}
    assert mask_personal_data("urn:altinn:person:identifier-no:12879397780") == "urn:altinn:person:identifier-no:128793*****"


def test_explain_allowed_pair(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    headers = a2_headers(dev_issuer)
    code, out = _run(capsys, headers["Authorization"][7:], "--consent", headers["AltinnSamtykke"],
                     "--config", config_file, "--path", INCOME_PATH + "?fraOgMed=2018-07")
    assert code == 0, out
    assert "[FAIL]" not in out
    assert "[pass] signature" in out
    assert "Rights package inntekt-sbl would release:" in out
    assert "oppgaveInntektsmottaker[].inntekt[].beloep" in out
    assert INCOME_PERSON not in out  # masked
    assert "010294*****" in out


def test_explain_shows_personal_data_on_request(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    headers = a2_headers(dev_issuer)
    _, out = _run(capsys, headers["Authorization"][7:], "--consent", headers["AltinnSamtykke"],
                  "--config", config_file, "--show-personal-data")
    assert INCOME_PERSON in out


def test_explain_names_the_failing_step_and_stops(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    headers = a2_headers(dev_issuer, consumer=OTHER_BANK, mp_consumer=BANK)
    code, out = _run(capsys, headers["Authorization"][7:], "--consent", headers["AltinnSamtykke"],
                     "--config", config_file, "--path", INCOME_PATH + "?fraOgMed=2018-07")
    assert code == 1
    lines = out.splitlines()
    fail = next(i for i, line in enumerate(lines) if "[FAIL]" in line)
    assert "CoveredBy" in lines[fail] and "consumer_mismatch" in lines[fail]
    assert all("[pass]" in line for line in lines[fail - 3 : fail])
    assert "not reached" in lines[fail + 1]


def test_explain_bad_signature_and_year(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    token = a3_headers(dev_issuer)["Authorization"][7:]
    head, payload, sig = token.split(".")
    bad = f"{head}.{payload}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    code, out = _run(capsys, bad, "--config", config_file)
    assert code == 1 and "[FAIL] signature" in out and "bad_signature" in out
    code, out = _run(capsys, token, "--config", config_file, "--path", tax_base_path("2021"))
    assert code == 1 and "metadata_out_of_range" in out


def test_explain_without_config_and_garbage(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out = _run(capsys, "not-a-token")
    assert code == 1 and "not a decodable compact JWS" in out


def test_explain_without_config_never_passes(capsys, dev_issuer: DevIssuer) -> None:  # type: ignore[no-untyped-def]
    from samtykke_gateway.dev.issuer import encode_token

    forged = encode_token({"alg": "none"}, {"exp": 9_999_999_999, "consumer": "x"}, None, alg="none")
    code, out = _run(capsys, forged, "--path", INCOME_PATH)
    assert code == 1
    assert "NOT VERIFIED" in out and "every check passed" not in out
    assert "--path ignored" in out
    genuine = a3_headers(dev_issuer)["Authorization"][7:]
    code, out = _run(capsys, genuine)
    assert code == 1 and "NOT VERIFIED" in out


def test_explain_without_path_does_not_claim_a_pass(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    token = dev_issuer.mint_maskinporten(consumer=BANK, scope="skatteetaten:inntekt")
    code, out = _run(capsys, token, "--config", config_file)
    assert code == 0
    assert "NOT bound to a request" in out and "every check passed" not in out


def test_explain_body_subject_route(capsys, dev_issuer: DevIssuer, config_file: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    route = """
[[routes]]
name = "ssg-body"
method = "POST"
path = "/api/b/{inntektsaar}"
scope = "skatteetaten:spesifisertsummertskattegrunnlag"
subject = { body = "fnr" }
altinn3_resources = ["ske-spesifisert-summert-skattegrunnlag"]
year = { source = "path", param = "inntektsaar", metadata = "inntektsaar" }
unscoped = true
"""
    Path(config_file).write_text(Path(config_file).read_text() + route)
    token = a3_headers(dev_issuer)["Authorization"][7:]
    body = tmp_path / "body.json"
    body.write_text('{"fnr": "12879397780"}')
    args = (token, "--config", config_file, "--path", "/api/b/2022", "--method", "POST")
    code, out = _run(capsys, *args, "--body", str(body))
    assert code == 0, out
    assert "[pass] subject named by the request" in out
    body.write_text('{"fnr": "01029413157"}')
    code, out = _run(capsys, *args, "--body", str(body))
    assert code == 1 and "[FAIL] consent given by the data subject asked about" in out
    body.write_text('{"fnr": "12879397780", "fnr": "01029413157"}')
    code, out = _run(capsys, *args, "--body", str(body))
    assert code == 1 and "[FAIL] subject named by the request" in out and "duplicate_member" in out
    code, out = _run(capsys, *args)  # no body given: what the gateway answers a POST without one
    assert code == 1 and "(415 unsupported_media_type)" in out
    assert main(["explain", token, "--config", config_file, "--path", "/api/b/2022", "--body", str(tmp_path / "nope")]) == 2
    # found by a fresh user: a body the gateway answers with 413 was "allowed", /dev/zero filled memory
    body.write_text('{"fnr": "12879397780", "pad": "%s"}' % ("x" * 70_000))
    code, out = _run(capsys, *args, "--body", str(body))
    assert code == 1 and "request_body_too_large" in out
    assert main(["explain", token, "--config", config_file, "--path", "/api/b/2022", "--body", "/dev/zero"]) == 2


HEADER_ROUTE = """
[[routes]]
name = "ssg-header"
method = "POST"
path = "/hdr/x"
scope = "skatteetaten:spesifisertsummertskattegrunnlag"
subject = { header = "NAV-PersonIdent" }
altinn3_resources = ["ske-spesifisert-summert-skattegrunnlag"]
unscoped = true
"""


def test_explain_header_subject_route(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    # found by a fresh user: a route whose subject is a header always failed with subject_missing
    Path(config_file).write_text(Path(config_file).read_text() + HEADER_ROUTE)
    token = a3_headers(dev_issuer)["Authorization"][7:]
    args = (token, "--config", config_file, "--path", "/hdr/x", "--method", "POST")
    code, out = _run(capsys, *args)
    assert code == 1 and "subject_missing" in out
    code, out = _run(capsys, *args, "--header", "NAV-PersonIdent: 12879397780")
    assert code == 0, out
    assert "[pass] subject named by the request" in out
    assert "header nav-personident: 128793*****" in out and "12879397780" not in out
    code, out = _run(capsys, *args, "--header", "nav-personident:12879397780", "--show-personal-data")
    assert code == 0 and "header nav-personident: 12879397780" in out
    code, out = _run(capsys, *args, "--header", "NAV-PersonIdent: 01029413157")
    assert code == 1 and "[FAIL] consent given by the data subject asked about" in out and "01029413157" not in out
    # the same checks as the gateway: a repeated or look-alike subject header is refused
    code, out = _run(capsys, *args, "--header", "NAV-PersonIdent: 12879397780", "--header", "NAV-PersonIdent: 12879397780")
    assert code == 1 and "[FAIL] subject named by the request" in out
    code, out = _run(capsys, *args, "--header", "NAV-PersonIdent: 12879397780", "--header", "NAV_PersonIdent: 01029413157")
    assert code == 1 and "ambiguous_header" in out


@pytest.mark.parametrize("header", [
    "NAV-PersonIdent 12879397780",  # no colon
    "NAV PersonIdent: 1",  # not a header name
    "X: a\nb",  # control character
    "X: " + "a" * 8193,  # over 8 KiB
    "Authorization: Bearer x",  # the token goes first
    "AltinnSamtykke: x",  # the consent header: --consent
])
def test_explain_refuses_unusable_headers(capsys, dev_issuer: DevIssuer, config_file: str, header: str) -> None:  # type: ignore[no-untyped-def]
    token = a3_headers(dev_issuer)["Authorization"][7:]
    assert main(["explain", token, "--config", config_file, "--path", "/hdr/x", "--header", header]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--header") and "12879397780" not in err


def test_explain_bounds_the_number_of_headers(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    token = a3_headers(dev_issuer)["Authorization"][7:]
    many = [arg for i in range(101) for arg in ("--header", f"X-{i}: v")]
    assert main(["explain", token, "--config", config_file, "--path", "/hdr/x", *many]) == 2
    assert "at most 100" in capsys.readouterr().err


def test_explain_shows_wanted_and_held_actions_and_resources(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 11: which action(s) and resource(s) the route wants, which the consent holds."""
    write_only = a3_headers(dev_issuer, consent={"actions": ["Write"]})["Authorization"][7:]
    code, out = _run(capsys, write_only, "--config", config_file, "--path", tax_base_path("2022"))
    assert code == 1, out
    assert ("route wants Altinn 3 resource ske-spesifisert-summert-skattegrunnlag or skd_4628_210607 with action"
            " consent or read (any case)") in out
    assert "  ske-spesifisert-summert-skattegrunnlag action write; metadata inntektsaar" in out
    assert "[FAIL] service code / resource id consented, by a right whose action the route accepts" in out
    assert "consent_action_not_accepted" in out
    migrated = a3_headers(dev_issuer, rights=[("skd_4628_210607", {"inntektsaar": "2022"}), (None, {})],
                          consent={"actions": ["Read", "Write"]})["Authorization"][7:]
    code, out = _run(capsys, migrated, "--config", config_file, "--path", tax_base_path("2022"))
    assert code == 0, out
    assert "  skd_4628_210607 action read, write; metadata inntektsaar" in out
    assert "Decision: allow (altinn3-migrated" in out


def test_explain_shows_the_handler_rule(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    handler = a3_headers(dev_issuer, mp_consumer="312345678", consent={"handled_by": "312345678"})["Authorization"][7:]
    code, out = _run(capsys, handler, "--config", config_file, "--path", tax_base_path("2022"))
    assert code == 1, out
    assert "route refuses a token issued to the consent's handler (handledBy)" in out
    assert f"consent holds (altinn3): given to {BANK}, handled by 312345678; the token was issued to 312345678" in out
    assert "handled_by_not_accepted" in out


def test_explain_consent_token_failures_are_consent_steps(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    headers = a2_headers(dev_issuer, claims={"exp": 1_600_000_000, "nbf": 1_599_999_970})
    code, out = _run(capsys, headers["Authorization"][7:], "--consent", headers["AltinnSamtykke"],
                     "--config", config_file, "--path", INCOME_PATH + "?fraOgMed=2018-07")
    assert code == 1
    assert "[FAIL] exp / nbf / iat (with leeway)" in out and "(403 consent_token_expired)" in out


def test_explain_under_a_root_path(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    """--root-path: the path as a mounted app receives it, prefix included (as the gateway matches it)."""
    token = a3_headers(dev_issuer)["Authorization"][7:]
    code, out = _run(capsys, token, "--config", config_file, "--path", "/mount" + tax_base_path("2022"),
                     "--root-path", "/mount")
    assert code == 0, out
    code, out = _run(capsys, token, "--config", config_file, "--path", "/mount" + tax_base_path("2022"))
    assert code == 1 and "[FAIL] route matches the request" in out and "(404 no_route)" in out


def test_explain_says_what_each_form_does_with_an_unmatched_path(capsys, dev_issuer: DevIssuer,  # type: ignore[no-untyped-def]
                                                                  config_file: str) -> None:
    token = a3_headers(dev_issuer)["Authorization"][7:]
    code, out = _run(capsys, token, "--config", config_file, "--path", "/api/v1/status")
    assert code == 1 and "(404 no_route)" in out
    assert "outside the protected prefixes: the sidecar refuses it (404 no_route); the middleware form hands" in out
    code, out = _run(capsys, token, "--config", config_file, "--path", "/api/formueinntekt/spesifisertsummertskattegrunnlag")
    assert code == 1 and "under a protected prefix: refused in the middleware form too (404 no_route)" in out


def test_explain_checks_the_query_as_the_gateway_does(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    token = a3_headers(dev_issuer)["Authorization"][7:]
    code, out = _run(capsys, token, "--config", config_file, "--path", tax_base_path("2022") + "?x=%ff")
    assert code == 1 and "[FAIL] query string" in out and "(400 bad_query)" in out
    assert "Maskinporten access token: verification" not in out  # the gateway stops before the tokens


def test_explain_says_which_checks_do_not_apply(capsys, dev_issuer: DevIssuer, config_file: str) -> None:  # type: ignore[no-untyped-def]
    """A check that has nothing to check here says so instead of ``[pass]``: no audience
    configured, no token-age bound, no supplier; the constraints that do apply still pass."""
    token = a3_headers(dev_issuer)["Authorization"][7:]
    code, out = _run(capsys, token, "--config", config_file, "--path", tax_base_path("2022"))
    assert code == 0, out
    assert ("[ n/a] aud names this data source (when an audience is configured): does not apply"
            " (no audience configured for the issuer)") in out
    assert "[ n/a] Maskinporten token not older than max_token_age_seconds (now - iat): does not apply" in out
    assert "[ n/a] supplier (HandledBy / delegation_source): does not apply (no supplier in the token" in out
    assert "[pass] metadata constraints (income year, period)" in out  # the route has a year
    assert "[pass] rights package known and open to the consumer" in out
    assert "[pass] signature" in out

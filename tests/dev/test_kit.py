"""The offline dev kit on the command line: `mint` and `dev-issuer` share persisted keys, and
a gateway trusting the dev issuer's JWKS accepts what `mint` printed."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from samtykke_gateway.cli.main import main
from tests.support import INCOME_PATH, running_gateway

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, cwd: Path) -> str:
    """``samtykke-gateway *args`` in ``cwd`` through the command line's own entry point, in this
    process (the console script itself runs as a process in the dev-issuer fixture and
    ``test_mint_help_shows_the_defaults``); returns what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    assert code == 0, err.getvalue()
    return out.getvalue()


@pytest.fixture
def dev_issuer_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`samtykke-gateway dev-issuer` as a real process on a free loopback port."""
    keys = tmp_path / "keys"
    _cli("mint", "maskinporten", "--keys-dir", str(keys), cwd=tmp_path)  # creates the keys
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "samtykke_gateway.cli.main", "dev-issuer", "--port", str(port),
                               "--keys-dir", str(keys)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/altinn/jwk", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dev-issuer did not start"
            time.sleep(0.1)
        yield url, keys
    finally:
        server.terminate()
        server.wait(timeout=10)


def _headers(out: str) -> dict[str, str]:
    """`mint` output: one `Name: value` header line per token, ready for curl -H."""
    lines = out.strip().splitlines()
    assert all(": " in line for line in lines), lines
    return dict(line.split(": ", 1) for line in lines)


def _pair(keys: Path, cwd: Path) -> dict[str, str]:
    out = _cli("mint", "altinn2", "--pair", "--keys-dir", str(keys), "--metadata", "fraOgMed=2018-06",
               "--metadata", "tilOgMed=2018-08", cwd=cwd)
    return _headers(out)


def _altinn3(keys: Path, cwd: Path, *extra: str) -> dict[str, str]:
    out = _cli("mint", "altinn3", "--keys-dir", str(keys), "--metadata", "fraOgMed=2018-06",
               "--metadata", "tilOgMed=2018-08", *extra, cwd=cwd)
    return _headers(out)


def _claims(bearer_line: str) -> dict:  # type: ignore[type-arg]
    import base64
    import json

    payload = bearer_line.removeprefix("Bearer ").split(".")[1]
    claims: dict[Any, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_mint_prints_header_lines_of_one_shape_and_long_lived_by_default(tmp_path: Path) -> None:
    """`mint altinn3` and `mint altinn2 --pair` print the same shape: full header lines,
    Authorization first; the by-hand default lifetime (3600 s) leaves time to type a curl."""
    keys = tmp_path / "keys"
    a3 = _altinn3(keys, tmp_path)
    a2 = _pair(keys, tmp_path)
    assert list(a3) == ["Authorization"] and list(a2) == ["Authorization", "AltinnSamtykke"]
    assert a3["Authorization"].startswith("Bearer ey") and a2["Authorization"].startswith("Bearer ey")
    claims = _claims(a3["Authorization"])
    assert claims["exp"] - claims["iat"] == 3600
    detail = claims["authorization_details"][0]
    assert detail["type"] == "urn:altinn:consent"
    assert detail["consentRights"][0]["resource"] == [{"type": "urn:altinn:resource", "value": "ske-innrapportert-inntekt"}]
    assert detail["consentRights"][0]["metadata"] == {"fraOgMed": "2018-06", "tilOgMed": "2018-08"}
    assert _claims(_altinn3(keys, tmp_path, "--lifetime", "120")["Authorization"])["exp"] - claims["iat"] <= 125
    raw = _cli("mint", "altinn2", "--pair", "--raw", "--keys-dir", str(keys), cwd=tmp_path).split()
    assert len(raw) == 2 and all(t.count(".") == 2 and ":" not in t for t in raw)  # bare tokens for `explain`


def test_mint_altinn3_makes_the_consents_a_data_source_must_refuse_or_accept(tmp_path: Path) -> None:
    """The cases a new user wants to try by hand: the actions of a migrated consent, another
    organisation's consent, a handler's token, an expired consent (found in a README-only trial)."""
    import datetime as dt

    keys = tmp_path / "keys"
    default = _claims(_altinn3(keys, tmp_path)["Authorization"])["authorization_details"][0]
    assert default["consentRights"][0]["action"] == ["consent"] and "handledBy" not in default
    assert default["to"]["ID"] == "0192:999999999"
    token = _claims(_altinn3(keys, tmp_path, "--action", "Read", "--action", "Write", "--recipient", "888888888",
                             "--handled-by", "999999999", "--consent-valid-days", "-1")["Authorization"])
    detail = token["authorization_details"][0]
    assert token["consumer"]["ID"] == "0192:999999999"  # the caller
    assert detail["to"]["ID"] == "0192:888888888" and detail["handledBy"]["ID"] == "0192:999999999"
    assert detail["consentRights"][0]["action"] == ["Read", "Write"]
    valid_to = dt.datetime.fromisoformat(detail["validTo"])
    assert valid_to < dt.datetime.now(dt.UTC) - dt.timedelta(hours=23)


def test_mint_help_shows_the_defaults(tmp_path: Path) -> None:
    import os

    proc = subprocess.run([sys.executable, "-m", "samtykke_gateway.cli.main", "mint", "--help"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for default in ("(default: 3600)", "(default: 999999999)", "(default: 01029413157)",
                    "(default: skatteetaten:inntekt)", "(default: .samtykke-dev)",
                    "(default: ske-innrapportert-inntekt)", "(default: 4804_210607)", "(default: no supplier)"):
        assert default in out, default
    assert "(default: None)" not in out and "(default: False)" not in out
    assert out.index("altinn3") < out.index("altinn2")  # Altinn 3 first


async def test_mint_then_dev_issuer_then_gateway(dev_issuer_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, keys = dev_issuer_process
    assert (keys / "altinn.pem").stat().st_mode & 0o077 == 0  # private key not group/world readable
    assert (keys / "maskinporten.pem").stat().st_mode & 0o077 == 0
    # two processes each, same persisted keys: Altinn 3 first, the Altinn 2 pair (legacy) after
    minted = [_altinn3(keys, tmp_path), _altinn3(keys, tmp_path), _pair(keys, tmp_path), _pair(keys, tmp_path)]
    async with running_gateway("middleware", url) as gw:
        for headers in minted:
            response = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=headers)
            assert response.status_code == 200, response.text
        outside = await gw.client.get(INCOME_PATH + "?fraOgMed=2018-09", headers=minted[0])
        assert outside.status_code == 403 and outside.json()["reason"] == "metadata_out_of_range"


async def test_dev_config_serves_by_hand(dev_issuer_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """README "Trying it by hand": `dev-config > dev.toml` is a working config for dev-issuer +
    example-upstream (found by a fresh user: hand-editing the tt02 config took several steps)."""
    from samtykke_gateway.sidecar.app import SidecarApp
    from samtykke_gateway.config import load_config
    from samtykke_gateway.dev.server import ThreadedServer
    from samtykke_gateway.dev.examples import ExampleUpstream

    url, keys = dev_issuer_process
    with ThreadedServer(ExampleUpstream().app) as upstream:
        text = _cli("dev-config", "--issuer-url", url, "--upstream-url", upstream.url, cwd=tmp_path)
        elsewhere = tmp_path / "somewhere" / "else"
        elsewhere.mkdir(parents=True)
        (elsewhere / "dev.toml").write_text(text)  # value-list files are named by absolute path
        assert _cli("check-config", "--config", str(elsewhere / "dev.toml"), cwd=tmp_path).startswith("config OK")
        config = load_config(elsewhere / "dev.toml")
        assert config.profile == "custom" and config.audit_url == f"sqlite:///{elsewhere}/dev-disclosures.db"
        app = SidecarApp(config)
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
                for headers in (_altinn3(keys, tmp_path), _pair(keys, tmp_path)):
                    response = await client.get(INCOME_PATH + "?fraOgMed=2018-07", headers=headers)
                    assert response.status_code == 200, response.text
        finally:
            await app.shutdown()

"""Fresh-user review: configs that crashed, misbehaved or were silently accepted.

A config file that is not UTF-8 is a clean config error (never the file's bytes in a message,
a log line or a traceback); upstream URLs, shadowed routes and colliding probe paths are
refused at load; in-memory one-time state is warned about."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest

from samtykke_gateway.cli.main import main
from samtykke_gateway.config import load_config
from samtykke_gateway.exceptions import ConfigError
from samtykke_gateway.sidecar.serve import ReloadingApp, _reload_done

from tests.state_support import cli, free_port, sidecar_process, write_config

SECRET = "hunter2-db-password"


def _latin1_config(tmp_path: Path, issuer_url: str = "http://127.0.0.1:9",
                   upstream_url: str = "http://127.0.0.1:9") -> Path:
    """A valid config with a Latin-1 comment ("år") and a secret further down."""
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url=upstream_url,
                        extra=f"# db password {SECRET}\n")
    path.write_bytes("# inntekts\u00e5r\n".encode("latin-1") + path.read_bytes())
    return path


# ----------------------------------------------------------------------------- 1. not UTF-8


def test_non_utf8_config_is_a_config_error_without_content(tmp_path: Path) -> None:
    path = _latin1_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "not UTF-8 at byte 10 (line 1)" in message
    assert SECRET not in message and "inntekts" not in message
    assert info.value.__context__ is None and info.value.__cause__ is None  # no chained repr of the bytes


def test_non_utf8_values_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    values = tmp_path / "inntekt-sbl-loennsinntekt-beskrivelse.txt"
    values.write_bytes(values.read_bytes() + "s\u00f8k\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not UTF-8 at byte" in str(info.value) and info.value.key_path.startswith("rights_packages.")
    assert info.value.__context__ is None


def test_check_config_and_serve_refuse_non_utf8_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _latin1_config(tmp_path)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid config: ") and "not UTF-8 at byte 10" in err and SECRET not in err
    done = subprocess.run([*cli(), "serve", "--config", str(path), "--port", "1"], capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"not UTF-8 at byte 10" in done.stderr and b"Traceback" not in done.stderr
    assert SECRET.encode() not in done.stderr


@pytest.mark.anyio
async def test_reload_of_non_utf8_config_is_refused_cleanly(tmp_path: Path, issuer_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                        extra=f"# db password {SECRET}\n")
    app = ReloadingApp(path)
    await app.start()
    try:
        current = app.current
        path.write_bytes(b"# \xff\xfe\n" + path.read_bytes())
        with caplog.at_level(logging.INFO):
            assert not await app.reload()
        assert app.current is current
        text = "\n".join(r.getMessage() for r in caplog.records) + "".join(str(r.exc_info) for r in caplog.records)
        assert "config reload refused" in text and "not UTF-8 at byte 2" in text
        assert SECRET not in text
    finally:
        await app.close()


@pytest.mark.anyio
async def test_reload_failure_of_any_kind_logs_no_exception_text(tmp_path: Path, issuer_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    app = ReloadingApp(path)
    await app.start()
    try:
        def boom(_path: object) -> None:
            raise UnicodeDecodeError("utf-8", SECRET.encode() + b"\xff", len(SECRET), len(SECRET) + 1, "invalid")

        monkeypatch.setattr("samtykke_gateway.sidecar.serve.load_config", boom)
        with caplog.at_level(logging.INFO):
            assert not await app.reload()
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "UnicodeDecodeError" in text and SECRET not in text
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        await app.close()


@pytest.mark.anyio
async def test_a_failed_sighup_task_is_retrieved_and_logged_by_class_only(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise UnicodeDecodeError("utf-8", SECRET.encode() + b"\xff", len(SECRET), len(SECRET) + 1, "invalid")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.wait([task])
    with caplog.at_level(logging.INFO):
        _reload_done(task)
    assert task._log_traceback is False  # type: ignore[attr-defined]  # retrieved: asyncio stays quiet
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "UnicodeDecodeError" in text and SECRET not in text


@pytest.mark.slow
def test_sighup_with_non_utf8_config_keeps_running_and_logs_no_content(tmp_path: Path, issuer_url: str) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9",
                        extra=f"# db password {SECRET}\n")
    port, log_path = free_port(), tmp_path / "serve.log"
    with sidecar_process([*cli(), "serve", "--config", str(path), "--port", str(port)], port=port,
                         log_path=log_path) as proc:
        path.write_bytes(b"# \xff\xfe\n" + path.read_bytes())
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reload refused" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert proc.poll() is None
    log = log_path.read_text(errors="replace")
    assert "config reload refused" in log and "not UTF-8 at byte 2" in log
    assert SECRET not in log and "never retrieved" not in log and "Traceback" not in log


# ----------------------------------------------------------------------------- 2. refused at load


def _demo(tmp_path: Path) -> dict:
    import tomllib

    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    return tomllib.loads(path.read_text())


def _parse(tmp_path: Path, data: dict) -> object:
    from samtykke_gateway.config import parse_config

    return parse_config(data, base_dir=tmp_path)


def _route(name: str, path: str, *, method: str | list[str] = "GET", scoped: bool = True) -> dict:
    route: dict = {"name": name, "method": method, "path": path, "scope": "skatteetaten:x",
                   "subject": {"header": "NAV-PersonIdent"}, "altinn2_service": "4804_210607"}
    if scoped:
        route["rights_package"] = "inntekt-sbl"
    else:
        route["unscoped"] = True
    return route


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8082/?a=b", "http://127.0.0.1:8082/base?", "http://127.0.0.1:8082/#frag",
    "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://127.0.0.1:abc", "http://127.0.0.1:-1",
    "ftp://127.0.0.1", "http://", "http:///base", "http://:8080/", "http://127.0.0.1:8082/a b",
    "HTTP//127.0.0.1",
])
def test_unusable_upstream_urls_are_config_errors(tmp_path: Path, url: str) -> None:
    data = _demo(tmp_path)
    data["upstream"]["url"] = url
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, data)
    assert info.value.key_path == "upstream.url"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8082", "https://upstream.internal/base/", "http://[::1]:65535/x",
                                 "https://svc:pw@upstream.internal"])
def test_usable_upstream_urls_load(tmp_path: Path, url: str) -> None:
    data = _demo(tmp_path)
    data["upstream"]["url"] = url
    _parse(tmp_path, data)


def test_check_config_refuses_upstream_query_and_says_credentials_are_not_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:8082/?a=b")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "upstream.url: must not have a query or fragment" in capsys.readouterr().err
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://svc:pw@127.0.0.1:8082")
    assert main(["check-config", "--config", str(path)]) == 0
    assert "never sent to the upstream" in capsys.readouterr().out


@pytest.mark.parametrize(("first", "second", "methods"), [
    ("/hdr/{a}", "/hdr/{b}", "GET,HEAD"),  # same shape, other parameter name
    ("/hdr/{a}", "/hdr/x", "GET,HEAD"),  # a parameter matches the literal too
    ("/{a}/{b}", "/hdr/{c}", "GET,HEAD"),
    ("/hdr/{a}", "/hdr/{a}", "GET,HEAD"),
])
def test_a_route_shadowed_by_an_earlier_one_is_refused(tmp_path: Path, first: str, second: str, methods: str) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route("open", first, scoped=False), _route("scoped", second)]
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, data)
    assert info.value.key_path == "routes[1].path"
    assert f"never reached for {methods}" in str(info.value) and "routes[0] (open)" in str(info.value)


def test_shadowing_counts_only_the_methods_both_routes_take(tmp_path: Path) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route("a", "/hdr/{a}", method="POST"), _route("b", "/hdr/{b}", method=["GET", "POST"])]
    with pytest.raises(ConfigError, match="never reached for POST:"):
        _parse(tmp_path, data)
    data["routes"] = [_route("a", "/hdr/{a}", method="POST"), _route("b", "/hdr/{b}", method="GET")]
    _parse(tmp_path, data)


@pytest.mark.parametrize(("first", "second"), [
    ("/hdr/x", "/hdr/{a}"),  # specific first: both reachable
    ("/hdr/{a}", "/hdr/{a}/more"),  # other length
    ("/hdr/x", "/hdr/y"),
    ("/hdr/x/{a}", "/hdr/{b}/y"),  # overlap (/hdr/x/y) but neither hides the other
])
def test_routes_that_stay_reachable_load(tmp_path: Path, first: str, second: str) -> None:
    data = _demo(tmp_path)
    data["routes"] = [_route("one", first, scoped=False), _route("two", second)]
    _parse(tmp_path, data)


@pytest.mark.parametrize(("gateway", "key"), [
    ({"health_path": "/metrics"}, "gateway.metrics_path"),
    ({"ready_path": "/healthz"}, "gateway.ready_path"),
    ({"health_path": "/probe", "metrics_path": "/probe"}, "gateway.metrics_path"),
    ({"health_path": "/healthz?x=1"}, "gateway.health_path"),
    ({"metrics_path": "/met rics"}, "gateway.metrics_path"),
    ({"ready_path": "/hdr/x"}, "gateway.ready_path"),  # a route's own path
])
def test_colliding_or_unmatchable_probe_paths_are_refused(tmp_path: Path, gateway: dict, key: str) -> None:
    data = _demo(tmp_path)
    data["routes"].append(_route("x", "/hdr/x"))
    data["gateway"].update(gateway)
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, data)
    assert info.value.key_path == key


# ----------------------------------------------------------------------------- 3. in-memory state

ONE_TIME = ('name = "spesifisertsummertskattegrunnlag"\n', 'name = "spesifisertsummertskattegrunnlag"\none_time = true\n')
LIMITED = ('name = "inntekt"\n', 'name = "inntekt"\ndaily_limit = 5\n')


def test_check_config_prints_the_state_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                        extra='[state]\nurl = "redis://:s3cret@redis.internal:6379/0"\nrevocation_file = "revoked.txt"\n'
                              'jti_replay = "refuse"\n[state.feed]\nurl = "https://feed.example/api/serviceowner/consents"\n'
                              'api_key_env = "F3_APIKEY"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "consent state      redis://:***@redis.internal:6379/0 (shared" in out and "s3cret" not in out
    assert f"revocation file: {tmp_path / 'revoked.txt'}" in out
    assert "revocation feed: altinn2 https://feed.example/api/serviceowner/consents every 60 s" in out
    assert "4804_210607" in out and "reused jti: refuse" in out and "WARNING" not in out


def test_check_config_warns_about_one_time_and_limits_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "consent state      memory://" in out and "revocation file: (none)" in out and "WARNING" not in out
    path.write_text(path.read_text().replace(*ONE_TIME).replace(*LIMITED))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("WARNING: routes inntekt, spesifisertsummertskattegrunnlag use one_time/daily_limit with in-memory state"
            in out)
    assert "a single worker/replica only, and lost on restart; use [state] url = redis://" in out


@pytest.mark.slow
def test_serve_logs_the_in_memory_warning_once_at_start(tmp_path: Path, issuer_url: str) -> None:
    path = write_config(tmp_path / "gw.toml", issuer_url=issuer_url, upstream_url="http://127.0.0.1:9")
    path.write_text(path.read_text().replace(*ONE_TIME))
    port, log_path = free_port(), tmp_path / "serve.log"
    with sidecar_process([*cli(), "serve", "--config", str(path), "--port", str(port)], port=port, log_path=log_path):
        pass
    lines = [line for line in log_path.read_text().splitlines() if "one_time/daily_limit" in line]
    assert len(lines) == 1 and '"level":"warning"' in lines[0] and "single worker/replica" in lines[0]


# ----------------------------------------------------------------------------- 5. minor


def test_a_bad_consent_id_argument_is_not_called_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                            extra='[state]\nrevocation_file = "revoked.txt"\n'))
    for argv in (["revoke", "--config", path, ""], ["state", "status", "--config", path, "not/an id"],
                 ["state", "clear-claim", "--config", path, " "]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "invalid config" not in err and "CONSENT_ID is not a consent id" in err
    assert main(["revoke", "--config", path, "616d2c43-17f9-4cc1-9257-41cdda157f11", "12879397780x/"]) == 2
    err = capsys.readouterr().err
    assert "CONSENT_ID 2 is not a consent id" in err and "12879397780" not in err
    assert not (tmp_path / "revoked.txt").exists()


@pytest.mark.anyio
async def test_unset_feed_api_key_variable_is_logged_readably(monkeypatch: pytest.MonkeyPatch) -> None:
    from samtykke_gateway.observe.logs import JsonFormatter, redact
    from samtykke_gateway.state.feed import FeedError, _HttpFeed

    monkeypatch.delenv("F3_APIKEY", raising=False)
    feed = _HttpFeed(name="altinn2", url="http://127.0.0.1:9/consents", params={}, http=None,  # type: ignore[arg-type]
                     api_key_env="F3_APIKEY", credentials=None)
    with pytest.raises(FeedError) as info:
        await feed._get(None)
    record = logging.LogRecord("samtykke_gateway.state", logging.WARNING, __file__, 1,
                               "consent feed poll failed: %s", (info.value,), None)
    message = json.loads(JsonFormatter().format(record))["message"]
    assert message == "consent feed poll failed: environment variable F3_APIKEY (the Altinn ApiKey) is not set"
    # credentials are still masked, in every spelling
    for text in ("ApiKey: s3cret", "apikey=s3cret", "APIKEY s3cret", "Authorization: Bearer s3cret"):
        assert "s3cret" not in redact(text), text


def test_revocation_file_accepts_guids_in_braces(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from samtykke_gateway.state.revocation_file import RevocationFile

    path = tmp_path / "revoked.txt"
    path.write_text("{7A1C7F52-0D4B-4E57-9E0B-3C2F1D2E4A10}  # from the CRM\n{not-a-guid}\n")
    file = RevocationFile(path)
    with caplog.at_level(logging.WARNING):
        file.load()
    assert file.error is None and file.check("7a1c7f52-0d4b-4e57-9e0b-3c2f1d2e4a10")
    assert [r.getMessage() for r in caplog.records] == [f"revocation file {path} line 2 is not a consent id; skipped"]
    config = str(write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                              extra='[state]\nrevocation_file = "revoked.txt"\n'))
    assert main(["revoke", "--config", config, "{7a1c7f52-0d4b-4e57-9e0b-3c2f1d2e4a10}",
                 "{616D2C43-17F9-4CC1-9257-41CDDA157F11}"]) == 0
    assert "revoked 2 consent id(s): 1 new" in capsys.readouterr().out  # the braced line already named the first
    assert path.read_text().splitlines()[-1] == "616d2c43-17f9-4cc1-9257-41cdda157f11"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte order mark; tomllib refuses it ("Invalid
    statement at line 1, column 1"), so the config reader drops it (second fresh-user pass)."""
    path = write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9")
    plain = load_config(path)
    path.write_bytes(b"\xef\xbb\xbf" + "# inntektsår\n".encode() + path.read_bytes())
    assert load_config(path).upstream_url == plain.upstream_url

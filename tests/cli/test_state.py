"""``samtykke-gateway revoke`` / ``state status`` / ``state confirm-reset``: Redis, revocation file, refusal
without either; ``check-config`` on the Redis's durability."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from samtykke_gateway.cli.main import main
from samtykke_gateway.state.redis_backend import RedisBackend

from tests.state_support import DEAD_REDIS_URL, own_redis, redis_backend, redis_prefix, write_config


def _config(tmp_path: Path, state: str) -> str:
    return str(write_config(tmp_path / "gw.toml", issuer_url="http://127.0.0.1:9", upstream_url="http://127.0.0.1:9",
                            extra=state))


def test_revoke_without_a_reachable_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["revoke", "--config", _config(tmp_path, ""), str(uuid.uuid4())]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_revoke_appends_to_the_revocation_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, '[state]\nrevocation_file = "revoked.txt"\n')
    cid = str(uuid.uuid4()).upper()
    assert main(["revoke", "--config", cfg, cid, cid]) == 0
    assert main(["revoke", "--config", cfg, cid]) == 0
    assert (tmp_path / "revoked.txt").read_text() == cid.lower() + "\n"
    assert main(["state", "status", "--config", cfg, cid]) == 0
    assert "revoked: yes" in capsys.readouterr().out
    assert main(["revoke", "--config", cfg, "not/an id"]) == 2


@pytest.mark.redis
def test_revoke_writes_to_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def check(url: str, prefix: str, cid: str) -> bool:
        b = RedisBackend(url, key_prefix=prefix)
        try:
            return await b.revoked(cid)
        finally:
            await b.close()

    async def scenario() -> None:
        async with redis_prefix() as (url, prefix):
            cfg = _config(tmp_path, f'[state]\nurl = "{url}"\nkey_prefix = "{prefix}"\n')
            cid = str(uuid.uuid4())
            rc = await asyncio.to_thread(main, ["revoke", "--config", cfg, cid.upper()])
            assert rc == 0
            assert await check(url, prefix, cid)
            assert await asyncio.to_thread(main, ["state", "status", "--config", cfg, cid]) == 0
            b = redis_backend(url, prefix)
            try:
                from samtykke_gateway.state import Claim

                await b.begin(Claim(consent_id="dangling", check_revocation=False, jti_key=None, jti_mode="off",
                                    jti_ttl_seconds=1, one_time=True, one_time_ttl_seconds=60, usage_key=None,
                                    daily_limit=0, token="t"))
            finally:
                await b.close()
            assert await asyncio.to_thread(main, ["state", "clear-claim", "--config", cfg, "DANGLING"]) == 0
            assert await asyncio.to_thread(main, ["state", "clear-claim", "--config", cfg, "DANGLING"]) == 1

    asyncio.run(scenario())
    out = capsys.readouterr().out
    assert "1 new in the shared state" in out and "revoked: yes; one-time: unused" in out
    assert "claim cleared" in out


def test_revoke_with_redis_down_exits_1(tmp_path: Path) -> None:
    cfg = _config(tmp_path, f'[state]\nurl = "{DEAD_REDIS_URL}"\n')
    assert main(["revoke", "--config", cfg, str(uuid.uuid4())]) == 1


def test_confirm_reset_needs_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "confirm-reset", "--config", _config(tmp_path, "")]) == 2
    assert "nothing to confirm" in capsys.readouterr().err
    cfg = _config(tmp_path, f'[state]\nurl = "{DEAD_REDIS_URL}"\n')
    assert main(["state", "confirm-reset", "--config", cfg]) == 1


def test_check_config_warns_about_a_redis_without_persistence(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with own_redis(tmp_path / "plain", persistent=False) as plain, \
            own_redis(tmp_path / "aof", persistent=True) as aof:
        assert main(["check-config", "--config", _config(tmp_path, f'[state]\nurl = "{plain.url}"\n')]) == 0
        out = capsys.readouterr().out
        assert "Redis durability: WARNING: no persistence" in out
        assert "WARNING: Redis durability: no persistence" in out
        assert main(["check-config", "--config", _config(tmp_path, f'[state]\nurl = "{aof.url}"\n')]) == 0
        out = capsys.readouterr().out
        assert "Redis durability: ok: AOF, appendfsync always" in out and "WARNING" not in out
    assert main(["check-config", "--config", _config(tmp_path, f'[state]\nurl = "{DEAD_REDIS_URL}"\n')]) == 0
    assert "Redis durability: UNKNOWN: Redis unreachable" in capsys.readouterr().out


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

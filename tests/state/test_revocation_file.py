"""The revocation file (``state/revocation_file.py``): one consent id a line, comments, GUID spellings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from samtykke_gateway.cli.main import main
from tests.state_support import write_config


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

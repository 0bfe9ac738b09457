"""``samtykke-gateway`` commands in ``cli/main.py`` (``check-config``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from samtykke_gateway.cli.main import main

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "config"


TT02 = CONFIG_DIR / "skatteetaten-tt02.toml"


def test_check_config_masks_upstream_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.copy(CONFIG_DIR / "inntekt-sbl-loennsinntekt-beskrivelse.txt", tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TT02.read_text().replace('url = "http://127.0.0.1:8081"', 'url = "http://svc:s3cret@127.0.0.1:8081"'))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "svc:***@127.0.0.1:8081" in out

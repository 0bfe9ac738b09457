"""`samtykke-gateway demo` exits 0 after the README's install command (run as a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_exits_zero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("samtykke-gateway")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "samtykke_gateway.cli.main", "demo"]
    proc = subprocess.run([*cmd, "--body-lines", "3"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every answer as expected" in proc.stdout
    assert "hash chain intact" in proc.stdout
    assert "-> 200" in proc.stdout and "-> 403" in proc.stdout and "-> 401" in proc.stdout
    # Altinn 3 first, allowed and denied; a migrated consent; the Altinn 2 pair last, as legacy
    out = proc.stdout
    a3, a2 = out.index("== Altinn 3: the consent inside the Maskinporten token =="), out.index("== Altinn 2 pair (legacy")
    assert a3 < a2 and out.index("-> 200", a3) < a2 and out.index("-> 403", a3) < a2
    assert a3 < out.index("skd_4628_210607") < a2 and a3 < out.index("lower-cased fraogmed") < a2
    assert "Demo finished" in out[a2:] and "-> 200" in out[a2:]
    assert "Traceback" not in proc.stderr
    # the log the demo points at is still there afterwards, and the command it prints reads it
    db = tmp_path / ".samtykke-demo" / "disclosures.db"
    assert f"disclosure log      {db}" in out and db.is_file()
    export = next(line.strip() for line in out.splitlines() if "audit export --store" in line)
    assert export == f"samtykke-gateway audit export --store sqlite:///{db} --subject 12879397780"
    read = subprocess.run([*cmd[:-1], *export.split()[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert read.returncode == 0 and "spesifisertsummertskattegrunnlag" in read.stdout, read.stdout + read.stderr

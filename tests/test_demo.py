"""`samtykke-gateway demo` exits 0 after the README's install command (run as a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_exits_zero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("samtykke-gateway")
    cmd = [exe, "demo"] if exe else [sys.executable, "-m", "samtykke_gateway.cli", "demo"]
    proc = subprocess.run([*cmd, "--body-lines", "3"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every answer as expected" in proc.stdout
    assert "hash chain intact" in proc.stdout
    assert "-> 200" in proc.stdout and "-> 403" in proc.stdout and "-> 401" in proc.stdout
    assert "Traceback" not in proc.stderr

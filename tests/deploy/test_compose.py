"""deploy/compose.yaml: valid against the Compose specification's JSON schema (the copy that
check-jsonschema ships as ``vendor.compose-spec``), two gateway replicas on a shared PostgreSQL
and a Redis that keeps what it acknowledged, and a gateway config that loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="the test extra installs pyyaml")

from samtykke_gateway.config import load_config  # noqa: E402

DEPLOY = Path(__file__).parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.fail("check-jsonschema is missing: pip install -e '.[test]'")
    return subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  gateway:\n    image: x\n    replica: 2\n")  # misspelt key
    assert _check_jsonschema(broken).returncode != 0


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_two_gateway_replicas_share_postgres_and_a_durable_redis() -> None:
    services = _compose()["services"]
    assert {"gateway", "postgres", "redis", "example-upstream", "dev-issuer"} <= services.keys()
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 2 and gateway["user"].startswith("10001")
    assert gateway["read_only"] is True
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--appendfsync always" in redis and "noeviction" in redis
    for mount in gateway["volumes"]:
        source = mount.split(":")[0]
        assert (DEPLOY / source).is_file(), f"{source} is not in deploy/"
    assert (DEPLOY / services["gateway"]["build"]["context"] / services["gateway"]["build"]["dockerfile"]).is_file()


def test_the_compose_gateway_config_loads_and_names_the_compose_services() -> None:
    config = load_config(DEPLOY / "compose" / "gateway.toml")
    assert config.audit_url.startswith("postgresql://samtykke:samtykke@postgres:5432/samtykke")
    assert config.state_url == "redis://redis:6379/0"
    assert config.upstream_url == "http://example-upstream:8081"


def test_files_the_compose_gateway_config_names_are_mounted_beside_it() -> None:
    """An ``in_file`` must be relative (an absolute path on the author's machine is not in the
    container) and mounted next to ``/etc/samtykke-gateway/gateway.toml``."""
    import tomllib

    config = tomllib.loads((DEPLOY / "compose" / "gateway.toml").read_text())
    named = [row["in_file"] for package in config["rights_packages"].values()
             for row in package.get("rows", []) if "in_file" in row]
    assert named, "the compose config no longer names a value file: drop this test"
    mounts = {target for mount in _compose()["services"]["gateway"]["volumes"]
              for target in [mount.split(":")[1]]}
    for name in named:
        assert not Path(name).is_absolute(), name
        assert f"/etc/samtykke-gateway/{name}" in mounts, f"{name} is not mounted beside the config"

"""deploy/kubernetes/: every manifest is valid against the Kubernetes schemas
(kubernetes-validate, strict), the kustomization's references resolve, the pods run as the
Dockerfile's non-root user on a read-only root filesystem, and the shipped config loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="the test extra installs pyyaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the test extra installs kubernetes-validate")

from samtykke_gateway.config import load_config  # noqa: E402

BASE = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((BASE / "kustomization.yaml").read_text()))


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for name in _kustomization()["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc:
                docs.append((name, doc))
    return docs


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    docs = _documents()
    assert {d["kind"] for _, d in docs} >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                                             "NetworkPolicy"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_validator_rejects_what_kubernetes_would() -> None:
    bad = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
           "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}, "maxUnavailabel": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_references_resolve() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    for name in kustomization["resources"]:
        assert (BASE / name).is_file(), f"resource {name} missing"
    present = {(d["kind"], d["metadata"]["name"]) for _, d in _documents()}
    for patch in kustomization.get("patches", []):
        assert (BASE / patch["path"]).is_file(), f"patch {patch['path']} missing"
        target = patch["target"]
        assert (target["kind"], target["name"]) in present, f"patch target {target} not in resources"
        for op in yaml.safe_load((BASE / patch["path"]).read_text()):
            assert op["op"] in ("add", "replace", "remove") and op["path"].startswith("/")
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {c["image"] for _, d in _documents() if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]}
    assert images <= used, "an images: entry names no container image"
    config_maps = {d["metadata"]["name"] for _, d in _documents() if d["kind"] == "ConfigMap"}
    for _, d in _documents():
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
            for volume in pod["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps


def _gateways() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, c) for _, d in _documents() if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "samtykke-gateway"]


def test_gateway_containers_are_hardened_probed_and_sized() -> None:
    gateways = _gateways()
    assert {d["metadata"]["name"] for d, _ in gateways} == {"samtykke-gateway", "data-api-with-gateway"}
    for deployment, container in gateways:
        pod = deployment["spec"]["template"]["spec"]
        security = container["securityContext"]
        assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True  # as the Dockerfile
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]["memory"] == "128Mi"  # ≥ the 92.6 MB peak RSS
        secret = container["env"][0]["valueFrom"]["secretKeyRef"]
        assert secret["name"] == "samtykke-gateway-secrets"
    kinds = {d["kind"]: d for _, d in _documents()}
    policy = kinds["NetworkPolicy"]["spec"]["ingress"][0]
    assert {"kubernetes.io/metadata.name": "monitoring"} in [f["namespaceSelector"]["matchLabels"] for f in policy["from"]]


def test_the_shipped_gateway_configs_load(tmp_path: Path) -> None:
    for _, doc in _documents():
        if doc["kind"] == "ConfigMap":
            path = tmp_path / f"{doc['metadata']['name']}.toml"
            path.write_text(doc["data"]["gateway.toml"])
            config = load_config(path)
            assert config.audit_url.startswith("postgresql://") and ":" not in config.audit_url.split("@")[0][13:]

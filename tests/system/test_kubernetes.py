"""deploy/kubernetes, checked without a cluster: every manifest is valid for a current
Kubernetes (kubernetes-validate, strict), and says what the service needs: 3 replicas behind
probes on /livez and /readyz, a grace period longer than the drain, non-root, resources, a
PodDisruptionBudget and an autoscaler, migrations as a Job, settings that are real settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.cli import build_parser
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        document = yaml.safe_load(path.read_text())
        found[document["kind"]] = document
    return found


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_is_valid_for_current_kubernetes(path: Path) -> None:
    if path.name == "kustomization.yaml":
        listed = yaml.safe_load(path.read_text())["resources"]
        assert sorted(listed) == sorted(
            p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"
        )
        return
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), KUBERNETES_VERSION, True)


def test_the_deployment_runs_three_probed_non_root_replicas() -> None:
    found = manifests()
    deployment = found["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert build_parser().parse_args(container["command"][1:]).command == "serve"
    # SIGTERM grace longer than the preStop pause plus the service's own drain.
    drain = int(found["ConfigMap"]["data"]["SHUTDOWN_GRACE_SECONDS"])
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_settings_come_from_a_configmap_and_secrets_from_a_secret() -> None:
    found = manifests()
    config, secret = found["ConfigMap"]["data"], found["Secret"]["stringData"]
    assert set(config) <= SETTINGS_ENV, set(config) - SETTINGS_ENV
    assert set(secret) <= SETTINGS_ENV, set(secret) - SETTINGS_ENV
    for name in ("DATABASE_URL", "JWT_SECRET", "B2_APPLICATION_KEY", "REDIS_URL"):
        assert name in secret and name not in config
    # The ConfigMap and the Secret together are a valid production configuration once every
    # placeholder is replaced; as committed, production refuses each one, by name.
    values: dict[str, Any] = {k.lower(): v for k, v in {**config, **secret}.items()}
    real = {name: v.replace("change-me", "Zq9" * 12) for name, v in values.items()}
    for name in secret:
        with pytest.raises(ValueError, match=f"{name} still holds a placeholder") as refused:
            Settings(_env_file=None, **(real | {name.lower(): values[name.lower()]}))  # type: ignore[call-arg]
        assert "Zq9" not in str(refused.value)
    settings = Settings(_env_file=None, **real)  # type: ignore[call-arg]
    settings.check_serving()
    assert settings.db_prepared_statements is False


def test_disruptions_autoscaling_and_migrations() -> None:
    found = manifests()
    assert found["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] > 3
    assert hpa["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    job = found["Job"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert build_parser().parse_args(container["command"][1:]).command == "migrate"
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == "http"

"""deploy/kubernetes, checked without a cluster: every manifest is valid for a current
Kubernetes (kubernetes-validate, strict), and says what the service needs: 3 replicas behind
probes on /livez and /readyz, a grace period longer than the drain, non-root, resources, a
PodDisruptionBudget and an autoscaler, migrations as a Job, settings that are real settings."""

from __future__ import annotations

import re
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
    """Every manifest by kind, and by `Kind/name` for kinds that come more than once."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        document = yaml.safe_load(path.read_text())
        found.setdefault(document["kind"], document)
        found[f"{document['kind']}/{document['metadata']['name']}"] = document
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
    # SIGTERM grace longer than the preStop pause, the service's own drain and the audit's
    # final flush.
    from app.audit.log import FINAL_FLUSH_SECONDS

    drain = int(found["ConfigMap"]["data"]["SHUTDOWN_GRACE_SECONDS"])
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + drain + FINAL_FLUSH_SECONDS


def secret_mounts(pod: dict[str, Any]) -> dict[str, str]:
    """The Secrets a pod's (only) container has mounted, by mount path."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {
        mount["mountPath"]: volumes[mount["name"]]["secret"]["secretName"]
        for mount in container.get("volumeMounts", [])
        if "secret" in volumes[mount["name"]]
    }


def test_settings_come_from_a_configmap_and_secrets_are_files() -> None:
    """Secrets are mounted as files in /run/secrets (SECRETS_DIR), never in the environment."""
    found = manifests()
    config = found["ConfigMap"]["data"]
    secret = found["Secret/orbit-exports"]["stringData"]
    owner = found["Secret/orbit-exports-migrate"]["stringData"]
    assert set(config) <= SETTINGS_ENV, set(config) - SETTINGS_ENV
    assert set(secret) <= SETTINGS_ENV, set(secret) - SETTINGS_ENV
    assert set(owner) == {"DATABASE_URL"}
    for name in ("DATABASE_URL", "JWT_SECRET", "B2_APPLICATION_KEY", "REDIS_URL"):
        assert name in secret and name not in config
    cron = found["CronJob"]["spec"]["jobTemplate"]
    pods = {
        "Deployment": (found["Deployment"]["spec"]["template"]["spec"], "orbit-exports"),
        "Job": (found["Job"]["spec"]["template"]["spec"], "orbit-exports-migrate"),
        "CronJob": (cron["spec"]["template"]["spec"], "orbit-exports-migrate"),
    }
    for kind, (pod, secret_name) in pods.items():
        (container,) = pod["containers"]
        assert secret_mounts(pod) == {"/run/secrets": secret_name}
        # Secret files are mode 0400 and the process is not root: readable through the group.
        security = pod["securityContext"]
        assert security["fsGroup"] == security["runAsUser"] == 10001, kind
        assert not any("secretRef" in source for source in container.get("envFrom", []))
        assert not any("valueFrom" in item for item in container.get("env", []))
    # Two roles: the service reads as DB_SERVICE_ROLE; the Job migrates as the owner.
    for name in ("DATABASE_URL", "DATABASE_LISTEN_URL"):
        assert secret[name].startswith(f"postgresql://{config['DB_SERVICE_ROLE']}:")
    assert not owner["DATABASE_URL"].startswith(f"postgresql://{config['DB_SERVICE_ROLE']}:")
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


def test_the_network_policy_lets_in_only_the_load_balancer() -> None:
    found = manifests()
    policy = found["NetworkPolicy"]["spec"]
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [8000]
    assert all("namespaceSelector" in peer for peer in ingress["from"])
    out = {
        (p.get("protocol", "TCP"), p["port"]) for rule in policy["egress"] for p in rule["ports"]
    }
    assert out == {
        ("TCP", 5432),
        ("TCP", 6432),
        ("TCP", 6379),
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 443),
    }


def test_images_are_pinned_by_version() -> None:
    found = manifests()
    for kind in ("Deployment", "Job"):
        (container,) = found[kind]["spec"]["template"]["spec"]["containers"]
        _, _, tag = container["image"].partition(":")
        assert (
            tag and tag != "latest" and re.fullmatch(r"\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", tag)
        )


def test_the_audit_is_pruned_daily_as_the_owner() -> None:
    found = manifests()
    cron = found["CronJob"]["spec"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["command"][1:])
    assert (args.command, args.action) == ("audit", "prune")
    assert cron["concurrencyPolicy"] == "Forbid"
    assert secret_mounts(pod) == {"/run/secrets": "orbit-exports-migrate"}
    assert int(found["ConfigMap"]["data"]["AUDIT_RETENTION_DAYS"]) >= 1


def test_disruptions_autoscaling_and_migrations() -> None:
    found = manifests()
    assert found["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] > 3
    assert hpa["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    job = found["Job"]["spec"]["template"]["spec"]
    (container,) = job["containers"]
    assert build_parser().parse_args(container["command"][1:]).command == "migrate"
    assert found["Service/orbit-exports"]["spec"]["ports"][0]["targetPort"] == "http"


def test_pgbouncer_keeps_prepared_statements_in_transaction_mode() -> None:
    """The shipped PgBouncer is 1.21+ with max_prepared_statements, and the service uses named
    prepared statements through it; so does compose's cluster profile."""
    found = manifests()
    pod = found["Deployment/pgbouncer"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["POOL_MODE"] == "transaction" and int(env["MAX_PREPARED_STATEMENTS"]) > 0
    assert _pgbouncer_version(container["image"]) >= (1, 21)
    assert found["ConfigMap"]["data"]["DB_PREPARED_STATEMENTS"] == "true"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    service = found["Service/pgbouncer"]["spec"]
    port = service["ports"][0]["port"]
    assert f"@pgbouncer:{port}/" in found["Secret/orbit-exports"]["stringData"]["DATABASE_URL"]
    labels = found["Deployment/pgbouncer"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert _pgbouncer_version(compose["pgbouncer"]["image"]) >= (1, 21)
    assert int(compose["pgbouncer"]["environment"]["MAX_PREPARED_STATEMENTS"]) > 0
    assert compose["replica-1"]["environment"]["DB_PREPARED_STATEMENTS"] == "true"


def _pgbouncer_version(image: str) -> tuple[int, int]:
    tag = image.partition(":")[2]
    found = re.fullmatch(r"v(\d+)\.(\d+)\.\d+(-p\d+)?(@sha256:[0-9a-f]{64})?", tag)
    assert found, image
    return int(found[1]), int(found[2])

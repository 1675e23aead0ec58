"""What the chart renders for each values set: hardening, storage modes, TLS, features."""

from __future__ import annotations

import base64
import copy
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.chart import (
    FULLNAME,
    NAMESPACE,
    VALUE_SETS,
    config_of,
    documents,
    find,
    kinds,
    load_values,
    pod_specs,
    render,
    render_set,
)

# ---- security context of every pod ---------------------------------------------------------


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """Container setting, falling back to the pod's (Kubernetes' own precedence)."""
    value = container.get("securityContext", {}).get(key)
    return value if value is not None else pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_meets_the_restricted_pod_security_profile(value_set: str) -> None:
    _, docs = render_set(value_set)
    specs = list(pod_specs(docs))
    assert {label.split("/")[0] for label, _ in specs} >= {"Deployment"}
    for label, pod in specs:
        assert not pod.get("hostNetwork")
        assert not pod.get("hostPID")
        assert not pod.get("hostIPC")
        containers = pod["containers"] + pod.get("initContainers", [])
        for container in containers:
            where = f"{label} container {container['name']}"
            ctx = container.get("securityContext", {})
            assert _effective(pod, container, "runAsNonRoot") is True, where
            assert _effective(pod, container, "runAsUser") == 65532, where
            assert _effective(pod, container, "runAsGroup") == 65532, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("privileged", False) is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not ctx.get("capabilities", {}).get("add"), where
            seccomp = _effective(pod, container, "seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert container.get("resources", {}).get("limits", {}).get("memory"), where


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_service_account_token_is_mounted_only_for_the_webhook(value_set: str) -> None:
    _, docs = render_set(value_set)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    wants_api = value_set == "webhook"
    assert pod["automountServiceAccountToken"] is wants_api
    assert pod["enableServiceLinks"] is False
    test_pod = next((spec for label, spec in pod_specs(docs) if label.startswith("Pod/")), None)
    assert test_pod is not None
    assert test_pod["automountServiceAccountToken"] is False
    if "ServiceAccount" in kinds(docs):
        assert find(docs, "ServiceAccount")["automountServiceAccountToken"] is False


def test_writable_paths_are_only_tmp_and_the_database() -> None:
    _, docs = render_set("defaults")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/tmp", "/var/lib/portcullis"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    claim = volumes[mounts["/var/lib/portcullis"]["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == f"{FULLNAME}-data"
    assert mounts["/etc/portcullis/config"]["readOnly"] is True


def test_probes_hit_health_endpoints_on_the_telemetry_port() -> None:
    _, docs = render_set("defaults")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 5556, "telemetry": 5558}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz/live", "port": "telemetry"}
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/healthz/ready",
        "port": "telemetry",
    }
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz/live"


# ---- image and config ------------------------------------------------------------------------


def test_image_is_pinned_by_digest_when_one_is_given() -> None:
    _, docs = render_set("existing-secret")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    digest = load_values("existing-secret")["image"]["digest"]
    assert container["image"] == f"localhost:5000/portcullis/portcullis:0.1.0@{digest}"
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]


def test_config_secret_carries_the_config_with_chart_owned_addresses() -> None:
    _, docs = render_set("ingress-tls")
    config = config_of(docs)
    assert config["issuer"] == "https://login.example.com/dex"
    assert config["web"] == {"http": "0.0.0.0:5556"}
    assert config["telemetry"] == {"http": "0.0.0.0:5558"}
    assert config["storage"] == {
        "type": "sqlite3",
        "config": {"file": "/var/lib/portcullis/portcullis.db"},
    }
    assert "grpc" not in config
    assert config["staticPasswords"][0]["username"] == "admin"


def test_config_change_changes_the_pod_checksum_and_nothing_else_does() -> None:
    values = load_values("ingress-tls")
    base = find(documents(render(values)), "Deployment")
    changed_values = copy.deepcopy(values)
    changed_values["config"]["oauth2"] = {"skipApprovalScreen": True}
    changed = find(documents(render(changed_values)), "Deployment")
    relabelled_values = {**copy.deepcopy(values), "podLabels": {"team": "identity"}}
    relabelled = find(documents(render(relabelled_values)), "Deployment")

    def checksum(deployment: dict[str, Any]) -> str:
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert len(checksum(base)) == 64
    assert checksum(changed) != checksum(base)
    assert checksum(relabelled) == checksum(base)


def test_existing_config_secret_is_referenced_not_created() -> None:
    _, docs = render_set("existing-secret")
    pod = find(docs, "Deployment")["spec"]["template"]
    assert not [d for d in docs if d["kind"] == "Secret"]
    config_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert config_volume["secret"]["secretName"] == "portcullis-config"
    assert "checksum/config" not in (pod["metadata"].get("annotations") or {})
    tls_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "sso-example-org-tls"
    sealing_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "sealing")
    assert sealing_volume["secret"]["secretName"] == "portcullis-sealing"


# ---- storage modes ---------------------------------------------------------------------------


def test_sqlite_on_a_claim_runs_one_pod_with_recreate_strategy() -> None:
    _, docs = render_set("defaults")
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = find(docs, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_sqlite_without_persistence_uses_an_emptydir_and_no_claim() -> None:
    _, docs = render_set("https-certmanager")
    assert "PersistentVolumeClaim" not in kinds(docs)
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}


def test_ha_postgres_runs_three_replicas_with_password_from_a_secret() -> None:
    _, docs = render_set("ha-postgres")
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in kinds(docs)
    config = config_of(docs)
    assert config["storage"] == {
        "type": "postgres",
        "config": {
            "host": "postgres.db.svc.cluster.local",
            "port": 5432,
            "database": "portcullis",
            "user": "portcullis",
            "password": "$PORTCULLIS_STORAGE_PASSWORD",
            "ssl": {"mode": "verify-full", "caFile": "/etc/portcullis/postgres-ca/ca.crt"},
        },
    }
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    password = next(e for e in env if e["name"] == "PORTCULLIS_STORAGE_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {
        "name": "portcullis-postgres",
        "key": "password",
    }
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "portcullis",
        "app.kubernetes.io/instance": "auth",
    }


def test_autoscaling_replaces_the_fixed_replica_count() -> None:
    _, docs = render_set("autoscaling")
    deployment = find(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets["cpu"]["averageUtilization"] == 70
    assert targets["memory"]["averageUtilization"] == 80
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


# ---- network exposure -------------------------------------------------------------------------


def test_ingress_routes_to_the_http_port_with_tls() -> None:
    _, docs = render_set("ingress-tls")
    ingress = find(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["login.example.com"], "secretName": "login-example-com-tls"}
    ]
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/dex"
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}


def test_service_exposes_only_enabled_listeners() -> None:
    default_ports = {
        p["name"]: p["port"] for p in find(render_set("defaults")[1], "Service")["spec"]["ports"]
    }
    assert default_ports == {"http": 5556, "telemetry": 5558}
    ha_ports = {
        p["name"]: p["port"] for p in find(render_set("ha-postgres")[1], "Service")["spec"]["ports"]
    }
    assert ha_ports == {"http": 5556, "grpc": 5557, "telemetry": 5558}
    https_service = find(render_set("https-selfsigned")[1], "Service")
    https_ports = {p["name"]: p for p in https_service["spec"]["ports"]}
    assert set(https_ports) == {"https", "telemetry"}
    assert https_ports["https"]["nodePort"] == 30554


def test_network_policy_limits_grpc_and_metrics_to_named_peers() -> None:
    _, docs = render_set("ha-postgres")
    policy = find(docs, "NetworkPolicy")
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "telemetry", "grpc"}
    assert rules["grpc"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "identity-admin"
    }
    assert rules["telemetry"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_service_monitor_scrapes_the_telemetry_port() -> None:
    _, docs = render_set("ha-postgres")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "telemetry"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


# ---- TLS for the issuer itself ---------------------------------------------------------------


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    key = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    else:  # pragma: no cover - genCA makes RSA keys
        raise AssertionError(f"unexpected CA key type {type(key)}")


def test_self_signed_mode_generates_a_serving_cert_signed_by_the_published_ca() -> None:
    _, docs = render_set("https-selfsigned")
    secret = find(docs, "Secret", f"{FULLNAME}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    serving = _cert(base64.b64decode(secret["data"]["tls.crt"]).decode())
    ca_pem = find(docs, "ConfigMap", f"{FULLNAME}-ca")["data"]["ca.crt"]
    ca = _cert(ca_pem)
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == ca_pem
    _verify_signed_by(serving, ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(sans.get_values_for_type(x509.DNSName))
    assert {
        FULLNAME,
        f"{FULLNAME}.{NAMESPACE}.svc",
        f"{FULLNAME}.{NAMESPACE}.svc.cluster.local",
        "portcullis.internal",
    } <= dns
    assert ipaddress.ip_address("10.96.0.50") in sans.get_values_for_type(x509.IPAddress)
    config = config_of(docs)
    assert config["web"] == {
        "https": "0.0.0.0:5554",
        "tlsCert": "/etc/portcullis/tls/tls.crt",
        "tlsKey": "/etc/portcullis/tls/tls.key",
    }


def test_cert_manager_mode_requests_a_certificate_for_the_service_and_issuer_host() -> None:
    _, docs = render_set("https-certmanager")
    cert = find(docs, "Certificate")
    assert cert["spec"]["secretName"] == f"{FULLNAME}-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert "portcullis.identity.svc.cluster.local" in cert["spec"]["dnsNames"]
    assert f"{FULLNAME}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-tls")]


def test_helm_test_pod_checks_discovery_through_the_service() -> None:
    _, docs = render_set("https-selfsigned")
    pod = find(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["ISSUER"] == "https://portcullis.internal:5554"
    assert (
        env["DISCOVERY_URL"] == "https://portcullis.internal:5554/.well-known/openid-configuration"
    )
    assert env["TARGET"] == f"{FULLNAME}.{NAMESPACE}.svc:5554"
    ca_volume = pod["spec"]["volumes"][0]
    assert ca_volume["configMap"]["name"] == f"{FULLNAME}-ca"
    _, plain = render_set("ingress-tls")
    plain_env = {e["name"]: e["value"] for e in find(plain, "Pod")["spec"]["containers"][0]["env"]}
    assert (
        plain_env["DISCOVERY_URL"]
        == "http://login.example.com/dex/.well-known/openid-configuration"
    )
    assert "CA_FILE" not in plain_env


# ---- preview features --------------------------------------------------------------------------


def test_webhook_toggle_renders_config_port_rbac_and_apiserver_kubeconfig() -> None:
    _, docs = render_set("webhook")
    config = config_of(docs)
    assert config["kubernetes"]["tokenReview"] == {
        "enabled": True,
        "addr": "0.0.0.0:5559",
        "path": "/tokenreview",
        "tlsCert": "/etc/portcullis/tls/tls.crt",
        "tlsKey": "/etc/portcullis/tls/tls.key",
        "audiences": ["kubernetes"],
        "authenticateCallers": True,
    }
    assert config["kubernetes"]["kubeconfigPage"]["clusters"][0]["name"] == "production"
    ports = {p["name"]: p["port"] for p in find(docs, "Service")["spec"]["ports"]}
    assert ports["webhook"] == 5559
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    kubeconfig = find(docs, "ConfigMap", f"{FULLNAME}-webhook-kubeconfig")
    assert (
        f"https://{FULLNAME}.{NAMESPACE}.svc:5559/tokenreview"
        in kubeconfig["data"]["webhook-kubeconfig.yaml"]
    )


def test_features_off_render_no_feature_objects() -> None:
    _, docs = render_set("defaults")
    # Two Secrets: the config and the generated storage sealing key.
    assert kinds(docs) == sorted(
        [
            "Deployment",
            "PersistentVolumeClaim",
            "Pod",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
        ]
    )
    assert "kubernetes" not in config_of(docs)


def test_notes_print_the_issuer_url_and_next_steps() -> None:
    rendered, _ = render_set("https-selfsigned")
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert "Issuer URL: https://portcullis.internal:5554" in notes
    assert "--oidc-issuer-url=https://portcullis.internal:5554" in notes
    assert f"configmap {FULLNAME}-ca" in notes
    assert "helm test auth --namespace identity" in notes

"""The path a cluster takes, replayed: from a published release to a login against its image.

One test follows what Flux does with the files a release generates, step by step, with the real
components: `portcullis-release release` publishes the built image index
(dist/image-multiarch, linux/amd64 and linux/arm64) and the chart into an htpasswd-protected
docker-registry; then, as source-controller would, the test decodes the dockerconfigjson pull
Secret, fetches the OCIRepository's ``ref.digest`` with those credentials (anonymous is
refused), picks the layer its ``layerSelector`` names and verifies the signature with the real
cosign and the key in the verify Secret; as helm-controller would, it renders that chart with
the HelmRelease's values (the values Secret, then ``spec.values`` on top) through the Helm
engine and validates every manifest; as the kubelet would, it pulls the exact image reference
the Deployment names (the index digest), resolves it to the node's platform (linux/amd64) as
containerd does, checks that image's signature with the real cosign, runs it under runc with
the rendered config Secret and arguments, and completes a password-grant login with a
confidential client.

What cannot run here is replaced, and said so: there is no API server, so the Secrets come from
replaying the `kubectl create secret` commands of the generated README (the Secret each would
create, validated against the Kubernetes schema), and the pod's network is the host loopback,
so the rendered listeners are moved to free 127.0.0.1 ports and the issuer URL to match.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shlex
import string
import subprocess
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml
from portcullis_release import REPO_ROOT, oci
from portcullis_release.build import oci_layout
from portcullis_release.distribute.registry import (
    AuthenticationError,
    DockerAuth,
    RegistryClient,
)
from portcullis_release.release import ReleaseOptions, run_release
from rich.console import Console

with warnings.catch_warnings():
    # authlib.jose is deprecated in favour of joserfc; it stays the independent verifier here
    # because the server itself signs with joserfc (as in tests/support/oidc_checks.py).
    # authlib.deprecate turns its own warnings to "always" when imported: import it first.
    import authlib.deprecate  # type: ignore[import-untyped]  # noqa: F401

    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, jwt  # type: ignore[import-untyped]

from tests.support.chart import (
    KUBE_VERSIONS,
    documents,
    find,
    is_crd_kind,
    validate_builtin,
    validate_crds,
)
from tests.support.image import (
    ImageConfig,
    free_port,
    pbkdf2_hash,
    start_container,
    wait_ready,
)
from tests.support.issuer import deep_merge
from tests.support.registry import Registry, start_registry

pytestmark = [pytest.mark.slow, pytest.mark.integration]

COSIGN = REPO_ROOT / ".cache" / "cosign" / "usr" / "bin" / "cosign"
# `make image-multiarch`'s output, and the cache holding the .debs of both architectures that
# the per-image SBOMs read (IMAGE_CACHE of that build).
MULTIARCH = REPO_ROOT / "dist" / "image-multiarch"
IMAGE_CACHE = Path(os.environ.get("PORTCULLIS_IMAGE_CACHE", str(REPO_ROOT / ".cache" / "image")))
# The node this test plays: what containerd's default platform matcher selects on it.
NODE_PLATFORM = {"os": "linux", "architecture": "amd64"}
CLUSTER_USER, CLUSTER_PASSWORD = "cluster", "cluster-pull-password"
CLIENT_ID, CLIENT_SECRET = "cluster-app", "cluster-app-secret-value"
EMAIL, PASSWORD = "admin@example.com", "a long admin password"


@pytest.fixture
def cluster_registry(tmp_path: Path) -> Iterator[Registry]:
    """Two users: the releaser pushes, the cluster only ever uses its own pull credentials."""
    reg = start_registry(
        tmp_path, {"releaser": "releaser-password", CLUSTER_USER: CLUSTER_PASSWORD}
    )
    try:
        yield reg
    finally:
        reg.stop()


def _secret(name: str, namespace: str, kind: str, data: dict[str, bytes]) -> dict[str, Any]:
    """A Secret as `kubectl create secret ... --dry-run=client -o yaml` writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": kind,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


_OPERATOR_ENV = {"REGISTRY_USER": CLUSTER_USER, "REGISTRY_PASSWORD": CLUSTER_PASSWORD}


def _operator_values() -> dict[str, Any]:
    """The operator's values.yaml: a local password user and a confidential client."""
    return {
        "config": {
            "issuer": "https://portcullis.example.com/dex",
            "oauth2": {"passwordConnector": "local", "skipApprovalScreen": True},
            "staticClients": [
                {
                    "id": CLIENT_ID,
                    "name": "Cluster App",
                    "secret": CLIENT_SECRET,
                    "redirectURIs": ["https://app.example.com/callback"],
                }
            ],
            "staticPasswords": [
                {
                    "email": EMAIL,
                    "hash": pbkdf2_hash(PASSWORD),
                    "username": "admin",
                    "userID": "08a8684b-db88-4b73-90a9-3cd1661f5466",
                }
            ],
        },
        "storage": {"sqlite3": {"persistence": {"enabled": False}}},
    }


def _readme_secret_commands(readme: str) -> list[list[str]]:
    """Every `kubectl ... create secret ...` command of the README (continuations joined)."""
    joined = readme.replace("\\\n", " ")
    commands = [
        shlex.split(line)
        for line in joined.splitlines()
        if line.startswith("kubectl ") and " create secret " in line
    ]
    assert len(commands) == 3, commands
    return commands


def _create_secret(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """What `kubectl -n NS create secret {docker-registry|generic} NAME ...` creates, for the
    flags the README uses (no API server here; kubectl is not a test dependency)."""
    argv = [string.Template(arg).substitute(env) for arg in argv]
    assert argv[:2] == ["kubectl", "-n"], argv
    assert argv[3:5] == ["create", "secret"], argv
    namespace, kind, name = argv[2], argv[5], argv[6]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[7:])
    if kind == "docker-registry":
        user, password = flags.pop("docker-username"), flags.pop("docker-password")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        entry = {"username": user, "password": password, "auth": token}
        config = {"auths": {flags.pop("docker-server"): entry}}
        secret = _secret(
            name,
            namespace,
            "kubernetes.io/dockerconfigjson",
            {".dockerconfigjson": json.dumps(config).encode()},
        )
    else:
        assert kind == "generic", argv
        key, path = flags.pop("from-file").split("=", 1)
        secret = _secret(name, namespace, "Opaque", {key: (cwd / path).read_bytes()})
    assert not flags, f"flags the replay does not know: {flags}"
    return secret


def _decoded(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _verified_claims(id_token: str, jwks: dict[str, Any], issuer: str) -> dict[str, Any]:
    """The ID token's signature against the served key set and its iss/exp, with Authlib (an
    implementation independent of the server's joserfc)."""
    claims = jwt.decode(
        id_token,
        JsonWebKey.import_key_set(jwks),
        claims_options={"iss": {"essential": True, "value": issuer}, "exp": {"essential": True}},
    )
    claims.validate(leeway=5)
    return dict(claims)


def _repository_of(url: str, host: str) -> str:
    assert url.startswith(f"oci://{host}/"), url
    return url.removeprefix(f"oci://{host}/")


def test_a_cluster_pulls_verifies_renders_runs_and_logs_in(
    cluster_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (MULTIARCH / "index.json").is_file(), (
        f"{MULTIARCH} is missing: run `make image-multiarch` first"
    )
    assert COSIGN.is_file(), f"{COSIGN} missing: run `make release-test-deps`"

    # ---- publish: the release command, into our registry, with a throwaway key ----
    monkeypatch.setenv("REGISTRY", f"{cluster_registry.host}/portcullis")
    monkeypatch.setenv("AUTH_FILE", str(cluster_registry.auth_file))
    for name in ("COSIGN_KEY", "COSIGN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    release_dir = tmp_path / "dist" / "release"
    options = ReleaseOptions(
        image=MULTIARCH,
        chart_dir=tmp_path / "dist" / "chart",
        release_dir=release_dir,
        manifest=REPO_ROOT / "release" / "manifest.yaml",
        flux_dir=tmp_path / "untouched-flux",
        deb_dir=IMAGE_CACHE / "debs",
        tree=tmp_path / "untouched-tree",
    )
    console = Console(record=True, width=400, file=io.StringIO())
    assert run_release(options, console) == 0, console.export_text()
    flux = release_dir / "flux"
    ocirepo = yaml.safe_load((flux / "ocirepository.yaml").read_text())
    helmrelease = yaml.safe_load((flux / "helmrelease.yaml").read_text())
    namespace = ocirepo["metadata"]["namespace"]
    spec = ocirepo["spec"]

    # ---- the Secrets, created by replaying the generated README's `kubectl create secret` ----
    operator_dir = tmp_path / "operator"
    operator_dir.mkdir()
    (operator_dir / "cosign.pub").write_bytes((release_dir / "cosign.pub").read_bytes())
    (operator_dir / "values.yaml").write_text(yaml.safe_dump(_operator_values()))
    secrets = {
        s["metadata"]["name"]: s
        for s in (
            _create_secret(argv, operator_dir, _OPERATOR_ENV)
            for argv in _readme_secret_commands((flux / "README.md").read_text())
        )
    }
    assert {s["metadata"]["namespace"] for s in secrets.values()} == {namespace}
    pull_secret = secrets[spec["secretRef"]["name"]]
    assert pull_secret["type"] == "kubernetes.io/dockerconfigjson"
    verify_secret = secrets[spec["verify"]["secretRef"]["name"]]
    (values_ref,) = helmrelease["spec"]["valuesFrom"]
    values_secret = secrets[values_ref["name"]]
    for secret in (pull_secret, verify_secret, values_secret):
        validate_builtin(secret, KUBE_VERSIONS[-1])
    assert [r["errors"] for r in validate_crds([ocirepo, helmrelease])] == [[], []]

    # ---- source-controller: pull ref.digest with the decoded pull secret ----
    docker_config = json.loads(_decoded(pull_secret, ".dockerconfigjson"))
    auth = DockerAuth.from_config(docker_config, "pull secret")
    chart_repo = _repository_of(spec["url"], cluster_registry.host)
    chart_digest = spec["ref"]["digest"]
    with (
        RegistryClient(cluster_registry.host, DockerAuth()) as anonymous,
        pytest.raises(AuthenticationError),
    ):
        anonymous.get_manifest(chart_repo, chart_digest)
    with RegistryClient(cluster_registry.host, auth) as client:
        raw, _media_type = client.get_manifest(chart_repo, chart_digest)
        assert oci.sha256_digest(raw) == chart_digest
        selected = [
            layer
            for layer in json.loads(raw)["layers"]
            if layer["mediaType"] == spec["layerSelector"]["mediaType"]
        ]
        assert len(selected) == 1, selected
        chart_tgz = client.get_blob(chart_repo, selected[0]["digest"])
    assert oci.sha256_digest(chart_tgz) == selected[0]["digest"]
    # Helm's own OCI client (the Go SDK) agrees: the same bytes by digest with the secret's
    # credentials, and nothing without them.
    pull_config = tmp_path / "pull-secret.json"
    pull_config.write_bytes(_decoded(pull_secret, ".dockerconfigjson"))
    pulled_dir = tmp_path / "helm-pull"
    pulled_dir.mkdir()
    chart_at_digest = f"{spec['url']}@{chart_digest}"
    helm = helm_python.RegistryClient(plain_http=True, credentials_file=str(pull_config))
    try:
        helm.pull(chart_at_digest, destination=pulled_dir)
    finally:
        helm.close()
    (pulled,) = pulled_dir.iterdir()
    assert pulled.read_bytes() == chart_tgz
    pulled.unlink()
    empty_config = tmp_path / "no-credentials.json"
    empty_config.write_text('{"auths": {}}')
    # The registry answers 401 with a Basic challenge; Helm has no credential to answer it.
    helm = helm_python.RegistryClient(plain_http=True, credentials_file=str(empty_config))
    try:
        with pytest.raises(helm_python.HelmError, match="basic credential not found"):
            helm.pull(chart_at_digest, destination=pulled_dir)
    finally:
        helm.close()
    assert not list(pulled_dir.iterdir())

    # ---- the cosign check (provider: cosign) with only the verify Secret's key ----
    home = tmp_path / "cosign-home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_bytes(_decoded(pull_secret, ".dockerconfigjson"))
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(_decoded(verify_secret, "cosign.pub"))
    cosign_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "SIGSTORE_NO_CACHE": "1",
        "TUF_ROOT": str(home / "tuf"),
    }
    cosign = subprocess.run(
        [
            str(COSIGN),
            "verify",
            "--key",
            str(pub),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            f"{spec['url'].removeprefix('oci://')}@{chart_digest}",
        ],
        env=cosign_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cosign.returncode == 0, cosign.stderr[-2000:]
    (payload,) = json.loads(cosign.stdout)
    assert payload["critical"]["image"]["docker-manifest-digest"] == chart_digest

    # ---- helm-controller: valuesFrom, then spec.values on top, through the Helm engine ----
    chart_dir = tmp_path / "chart"
    with tarfile.open(fileobj=io.BytesIO(chart_tgz), mode="r:gz") as archive:
        archive.extractall(chart_dir, filter="data")
    values = deep_merge(
        yaml.safe_load(_decoded(values_secret, values_ref["valuesKey"])),
        helmrelease["spec"]["values"],
    )
    loaded = helm_python.Chart.load(chart_dir / "portcullis")
    loaded.validate_schema(values)
    release_name = helmrelease["spec"].get("releaseName") or helmrelease["metadata"]["name"]
    rendered = loaded.render(
        values,
        name=release_name,
        namespace=helmrelease["spec"].get("targetNamespace") or namespace,
        is_install=True,
    )
    docs = documents(rendered)
    builtin = [d for d in docs if not is_crd_kind(d)]
    for doc in builtin:
        validate_builtin(doc, KUBE_VERSIONS[-1])
    crd_results = validate_crds([d for d in docs if is_crd_kind(d)])
    assert all(not r["errors"] for r in crd_results), crd_results

    # ---- the kubelet: pull the exact image reference with the pod's imagePullSecret ----
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": pull_secret["metadata"]["name"]}]
    (container_spec,) = pod["containers"]
    image_ref = oci.Reference.parse(container_spec["image"])
    assert image_ref.digest is not None
    assert image_ref.digest == helmrelease["spec"]["values"]["image"]["digest"]
    assert image_ref.host == cluster_registry.host
    with RegistryClient(cluster_registry.host, auth) as client:
        raw, media_type = client.get_manifest(image_ref.repository, image_ref.digest)
        assert oci.sha256_digest(raw) == image_ref.digest
        # The pinned digest is the image index; containerd picks the node's platform from it.
        assert media_type == oci.OCI_INDEX
        entries = json.loads(raw)["manifests"]
        assert sorted(oci.platform_of(e) for e in entries) == ["linux/amd64", "linux/arm64/v8"]
        (node_entry,) = [
            e for e in entries if {k: e["platform"].get(k) for k in NODE_PLATFORM} == NODE_PLATFORM
        ]
        platform_digest = node_entry["digest"]
        raw, _media_type = client.get_manifest(image_ref.repository, platform_digest)
        assert oci.sha256_digest(raw) == platform_digest
        image_manifest = json.loads(raw)
        config_blob = client.get_blob(image_ref.repository, image_manifest["config"]["digest"])
        layers = [
            (layer["mediaType"], client.get_blob(image_ref.repository, layer["digest"]))
            for layer in image_manifest["layers"]
        ]
    for (_, blob), layer in zip(layers, image_manifest["layers"], strict=True):
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    assert json.loads(config_blob)["architecture"] == "amd64"
    # The image the node runs is signed under its own digest, and so is the index it came
    # through: the real cosign, with only the verify Secret's key.
    for digest in (image_ref.digest, platform_digest):
        signed = subprocess.run(
            [
                str(COSIGN),
                "verify",
                "--key",
                str(pub),
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                "--allow-insecure-registry",
                f"{image_ref.name}@{digest}",
            ],
            env=cosign_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert signed.returncode == 0, signed.stderr[-2000:]
        (payload,) = json.loads(signed.stdout)
        assert payload["critical"]["image"]["docker-manifest-digest"] == digest
    rootfs = tmp_path / "rootfs"
    oci_layout.unpack_layers(layers, rootfs)
    # The pod's security context, as runc applies it: its user, and the read-only root, no
    # capabilities and no privilege escalation that the runc harness always enforces.
    security = container_spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    image_config = dataclasses.replace(
        ImageConfig.from_layout_config(json.loads(config_blob)),
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
    )

    # The config Secret the chart rendered, mounted where the pod mounts it; the listeners move
    # from the pod's own network to free loopback ports (host networking under runc).
    (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    config_secret = find(docs, "Secret", config_volume["secret"]["secretName"])
    issuer_config = yaml.safe_load(_decoded(config_secret, "config.yaml"))
    assert issuer_config["web"] == {"http": "0.0.0.0:5556"}, issuer_config["web"]
    web, telemetry = free_port(), free_port()
    issuer_url = f"http://127.0.0.1:{web}/dex"
    issuer_config["issuer"] = issuer_url
    issuer_config["web"] = {"http": f"127.0.0.1:{web}"}
    issuer_config["telemetry"] = {
        **issuer_config.get("telemetry", {}),
        "http": f"127.0.0.1:{telemetry}",
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(issuer_config))
    config_file.chmod(0o644)
    (mount,) = [m for m in container_spec["volumeMounts"] if m["name"] == "config"]
    # The chart-generated storage sealing key Secret, mounted where the pod mounts it.
    (sealing_volume,) = [v for v in pod["volumes"] if v["name"] == "sealing"]
    sealing_secret = find(docs, "Secret", sealing_volume["secret"]["secretName"])
    (sealing_mount,) = [m for m in container_spec["volumeMounts"] if m["name"] == "sealing"]
    assert issuer_config["storageSealing"] == {"keyFile": f"{sealing_mount['mountPath']}/key"}
    sealing_key = tmp_path / "sealing.key"
    sealing_key.write_bytes(_decoded(sealing_secret, "key"))
    sealing_key.chmod(0o644)
    args = [
        *(container_spec.get("command") or image_config.entrypoint),
        *container_spec.get("args", image_config.cmd),
    ]
    container = start_container(
        tmp_path,
        rootfs,
        image_config,
        args=args,
        extra_binds={
            f"{mount['mountPath']}/config.yaml": config_file,
            f"{sealing_mount['mountPath']}/key": sealing_key,
        },
    )
    try:
        wait_ready(container, f"{issuer_url}/.well-known/openid-configuration", timeout=30)
        # ---- a login: the password grant with the confidential client ----
        response = httpx.post(
            f"{issuer_url}/token",
            data={
                "grant_type": "password",
                "username": EMAIL,
                "password": PASSWORD,
                "scope": "openid email",
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        tokens = response.json()
        discovery = httpx.get(f"{issuer_url}/.well-known/openid-configuration", timeout=10).json()
        jwks = httpx.get(discovery["jwks_uri"], timeout=10).json()
        claims = _verified_claims(tokens["id_token"], jwks, issuer_url)
        assert claims["aud"] == CLIENT_ID
        assert claims["email"] == EMAIL
        refused = httpx.post(
            f"{issuer_url}/token",
            data={
                "grant_type": "password",
                "username": EMAIL,
                "password": "wrong",
                "scope": "openid",
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert refused.status_code in (400, 401), refused.text
    finally:
        container.stop(timeout=10)

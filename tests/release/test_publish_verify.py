"""Sign, publish and verify against a real authenticated registry, cross-checked by real cosign.

Every tamper case must make `verify` fail with its own reason; where cosign can judge the case
(signatures and attestations), cosign must reject it too.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from portcullis_release import cli, oci
from portcullis_release.attest import cosign_format, cosign_keys
from portcullis_release.attest.provenance import BuildRun, SourceInfo
from portcullis_release.attest.sbom import ImageInputs
from portcullis_release.distribute.publish import Publisher, PublishReport, publish_plan
from portcullis_release.distribute.registry import DockerAuth, RegistryClient
from portcullis_release.oci import Artifact, Reference
from portcullis_release.plan import ReleasePlan
from portcullis_release.release import prepare
from portcullis_release.verify.policy import Policy
from portcullis_release.verify.verifier import VerificationError, Verifier

from tests.release.conftest import (
    BUILDER_ID,
    SOURCE_REPO,
    KeyPair,
    SyntheticRelease,
    cosign_env,
    synthetic_release,
)
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("reg"), {"releaser": "release-test-password"})
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def inputs_a(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRelease:
    return synthetic_release(tmp_path_factory.mktemp("a"), marker="a")


@pytest.fixture(scope="module")
def inputs_b(tmp_path_factory: pytest.TempPathFactory) -> SyntheticRelease:
    return synthetic_release(tmp_path_factory.mktemp("b"), marker="b", version="9.9.9")


def client(reg: Registry) -> RegistryClient:
    return RegistryClient(reg.host, DockerAuth.from_file(reg.auth_file))


def release(
    reg: Registry,
    prefix: str,
    inputs: SyntheticRelease,
    key: KeyPair,
    workdir: Path,
    *,
    builder: str = BUILDER_ID,
    source: str = SOURCE_REPO,
    publish: bool = True,
) -> tuple[ReleasePlan, Path, PublishReport | None]:
    """Run the release steps (SBOM, provenance, sign, publish) into ``host/prefix``."""
    plan = inputs.plan(f"{reg.host}/{prefix}")
    release_dir = workdir / f"release-{prefix.replace('/', '-')}"
    private = cosign_keys.load_private_key(key.private, key.password.encode())
    prepare(
        plan,
        release_dir,
        private,
        ImageInputs(inputs.runtime_lock, inputs.packages_lock, inputs.deb_dir),
        workdir,
        BuildRun(builder_id=builder),
        SourceInfo(source, "refs/heads/main", "0" * 40, False),
    )
    report = publish_plan(plan, release_dir, reg.auth_file) if publish else None
    return plan, release_dir, report


def verifier(reg: Registry, key: Path, **policy: object) -> Verifier:
    pol = Policy(builder_id=BUILDER_ID, source_repository=SOURCE_REPO)
    for name, value in policy.items():
        setattr(pol, name, value)
    return Verifier(client(reg), cosign_keys.load_public_key(key), pol)


def pinned(plan: ReleasePlan, role: str = "image") -> Reference:
    ref = plan.ref_for(role).with_tag(plan.tag_for(role))
    return Reference.parse(f"{ref}@{plan.artifact_for(role).digest}")


def provenance_policy(directory: Path) -> Path:
    """The builder/source policy as CUE, for `cosign verify-attestation --policy`: cosign unifies
    it with each provenance statement and rejects on conflict."""
    path = directory / "provenance-policy.cue"
    path.write_text(
        f'predicate: runDetails: builder: id: "{BUILDER_ID}"\n'
        f'predicate: buildDefinition: externalParameters: source: repository: "{SOURCE_REPO}"\n'
    )
    return path


def run_cosign(cosign: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cosign), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def cosign_verify(cosign: Path, env: dict[str, str], pub: Path, ref: str, *extra: str) -> int:
    proc = run_cosign(
        cosign,
        env,
        *extra[:1] or ("verify",),
        "--key",
        str(pub),
        "--insecure-ignore-tlog=true",
        "--allow-http-registry",
        "--allow-insecure-registry",
        *extra[1:],
        ref,
    )
    return proc.returncode


# ---- the happy path ------------------------------------------------------------------------


def test_published_release_verifies_and_republishing_pushes_nothing(
    shared_registry: Registry,
    inputs_a: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan, release_dir, report = release(shared_registry, "happy", inputs_a, keypair, tmp_path)
    assert report is not None
    assert report.blobs_pushed > 0
    assert report.manifests_pushed == 6
    assert sorted(t.split(":")[-1] for t in report.tags_moved) == sorted(
        [
            cosign_format.sig_tag(plan.image.digest),
            cosign_format.att_tag(plan.image.digest),
            cosign_format.sig_tag(plan.artifact_for("chart").digest),
            cosign_format.att_tag(plan.artifact_for("chart").digest),
            "1.2.3",
            "1.2.3",
        ]
    )

    for role in ("image", "chart"):
        result = verifier(shared_registry, keypair.public).verify(pinned(plan, role))
        assert result.digest == plan.artifact_for(role).digest
        assert result.blobs_checked == 2
        assert any(n.startswith("SBOM: CycloneDX 1.6") for n in result.notes)

    # Publishing the same release again pushes nothing and moves no tag.
    again = publish_plan(plan, release_dir, shared_registry.auth_file)
    assert not again.changed, again.summary()
    assert again.blobs_pushed == 0
    assert again.manifests_pushed == 0
    assert again.tags_unchanged == 6

    code = cli.main(
        [
            "verify",
            str(pinned(plan)),
            "--key",
            str(keypair.public),
            "--builder-id",
            BUILDER_ID,
            "--source-repo",
            SOURCE_REPO,
            "--auth-file",
            str(shared_registry.auth_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"OK {plan.image_ref.name}@{plan.image.digest}" in out


def test_helm_pulls_the_chart_we_publish(
    shared_registry: Registry,
    inputs_a: SyntheticRelease,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our chart OCI artifact is one Helm (the Go SDK) accepts, byte for byte."""
    import helm_python

    plan = inputs_a.plan(f"{shared_registry.host}/helm")
    pub = Publisher(client(shared_registry))
    chart = plan.artifact_for("chart")
    pub.upload(plan.chart_ref.repository, chart)
    pub.tag(plan.chart_ref.repository, plan.chart_tag, chart)
    monkeypatch.chdir(tmp_path)
    helm = helm_python.RegistryClient(
        plain_http=True, credentials_file=str(shared_registry.auth_file)
    )
    try:
        helm.pull(f"oci://{plan.chart_ref.name}:{plan.chart_version}")
    finally:
        helm.close()
    assert (tmp_path / f"portcullis-{plan.chart_version}.tgz").read_bytes() == plan.chart_tgz


def test_cosign_verifies_our_signatures_and_attestations(
    shared_registry: Registry,
    inputs_a: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    cosign: Path,
) -> None:
    plan, _, _ = release(shared_registry, "cosign-ok", inputs_a, keypair, tmp_path)
    env = cosign_env(tmp_path, shared_registry)
    for role in ("image", "chart"):
        ref = f"{plan.ref_for(role).name}@{plan.artifact_for(role).digest}"
        assert cosign_verify(cosign, env, keypair.public, ref) == 0, role
        for kind in ("slsaprovenance1", "cyclonedx"):
            proc = run_cosign(
                cosign,
                env,
                "verify-attestation",
                "--key",
                str(keypair.public),
                "--type",
                kind,
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                "--allow-insecure-registry",
                ref,
            )
            assert proc.returncode == 0, (role, kind, proc.stderr[-2000:])
            statements = [
                json.loads(__import__("base64").b64decode(json.loads(line)["payload"]))
                for line in proc.stdout.splitlines()
                if line.strip()
            ]
            assert any(
                oci.digest_hex(plan.artifact_for(role).digest)
                == s["subject"][0]["digest"]["sha256"]
                or any(
                    sub["digest"]["sha256"] == oci.digest_hex(plan.artifact_for(role).digest)
                    for sub in s["subject"]
                )
                for s in statements
            )


def test_cosign_accepts_our_provenance_under_the_builder_source_policy(
    shared_registry: Registry,
    inputs_a: SyntheticRelease,
    keypair: KeyPair,
    tmp_path: Path,
    cosign: Path,
) -> None:
    plan, _, _ = release(shared_registry, "cosign-policy", inputs_a, keypair, tmp_path)
    env = cosign_env(tmp_path, shared_registry)
    ref = f"{plan.image_ref.name}@{plan.image.digest}"
    code = cosign_verify(
        cosign,
        env,
        keypair.public,
        ref,
        "verify-attestation",
        "--type",
        "slsaprovenance1",
        "--policy",
        str(provenance_policy(tmp_path)),
    )
    assert code == 0


def test_our_verifier_accepts_signatures_made_by_cosign(
    shared_registry: Registry,
    inputs_a: SyntheticRelease,
    tmp_path: Path,
    cosign: Path,
) -> None:
    env = cosign_env(tmp_path, shared_registry, password="cosign-made")
    keydir = tmp_path / "cosign-key"
    keydir.mkdir()
    made = subprocess.run(
        [str(cosign), "generate-key-pair"],
        cwd=keydir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    key = KeyPair(keydir / "cosign.key", keydir / "cosign.pub", "cosign-made")
    # Our attestations signed with cosign's own key file (read through our key loader)...
    plan, _, _ = release(shared_registry, "cosign-signed", inputs_a, key, tmp_path)
    # ...and the image signature made by cosign itself, replacing ours.
    image = plan.image_ref.name
    c = client(shared_registry)
    c.delete_manifest(
        plan.image_ref.repository,
        c.manifest_digest(plan.image_ref.repository, cosign_format.sig_tag(plan.image.digest))
        or "",
    )
    with pytest.raises(VerificationError, match="unsigned"):
        verifier(shared_registry, key.public).verify(pinned(plan))
    proc = run_cosign(
        cosign,
        env,
        "sign",
        "--key",
        str(key.private),
        "--tlog-upload=false",
        "--allow-http-registry",
        "--allow-insecure-registry",
        "-y",
        f"{image}@{plan.image.digest}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = verifier(shared_registry, key.public).verify(pinned(plan))
    assert result.digest == plan.image.digest


# ---- tamper cases ----------------------------------------------------------------------------


def _attachment(c: RegistryClient, repo: str, tag: str) -> Artifact:
    manifest, media_type = c.get_manifest(repo, tag)
    art = Artifact(manifest, media_type)
    for desc in art.layers():
        art.blobs[desc.digest] = c.get_blob(repo, desc.digest)
    return art


def _replace_attachment(
    c: RegistryClient, repo: str, tag: str, layers: list[cosign_format.Layer]
) -> None:
    pub = Publisher(c)
    art = cosign_format.attachment_artifact(layers)
    pub.upload(repo, art)
    c.put_manifest(repo, tag, art.manifest, art.media_type)


def tamper_wrong_key(ctx: TamperContext) -> None:
    ctx.key = ctx.other_key


def tamper_payload(ctx: TamperContext) -> None:
    repo, tag = ctx.plan.image_ref.repository, cosign_format.sig_tag(ctx.plan.image.digest)
    layers = cosign_format.layers_of(_attachment(ctx.client, repo, tag))
    doc = json.loads(layers[0].blob)
    doc["critical"]["identity"]["docker-reference"] = "evil.example/other"
    forged = json.dumps(doc, separators=(",", ":")).encode()
    _replace_attachment(
        ctx.client,
        repo,
        tag,
        [cosign_format.Layer(layers[0].media_type, forged, layers[0].annotations)],
    )


def tamper_replay(ctx: TamperContext) -> None:
    other = ctx.other_plan()
    repo = ctx.plan.image_ref.repository
    stolen = _attachment(ctx.client, repo, cosign_format.sig_tag(other.image.digest))
    ctx.client.put_manifest(
        repo, cosign_format.sig_tag(ctx.plan.image.digest), stolen.manifest, stolen.media_type
    )


def tamper_move_tag(ctx: TamperContext) -> None:
    other = ctx.other_plan(publish=False)
    pub = Publisher(ctx.client)
    pub.upload(ctx.plan.image_ref.repository, other.image)
    pub.tag(ctx.plan.image_ref.repository, ctx.plan.image_tag, other.image)


def tamper_layer_blob(ctx: TamperContext) -> None:
    layer = ctx.plan.image.layers()[0].digest
    hexd = oci.digest_hex(layer)
    path = ctx.registry.root / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def tamper_provenance_digest(ctx: TamperContext) -> None:
    other = ctx.other_plan()
    repo = ctx.plan.image_ref.repository
    stolen = _attachment(ctx.client, repo, cosign_format.att_tag(other.image.digest))
    ctx.client.put_manifest(
        repo, cosign_format.att_tag(ctx.plan.image.digest), stolen.manifest, stolen.media_type
    )


def tamper_builder(ctx: TamperContext) -> None:
    ctx.republish(builder="https://evil.example/builder")


def tamper_source(ctx: TamperContext) -> None:
    ctx.republish(source="https://evil.example/fork.git")


def tamper_missing_sbom(ctx: TamperContext) -> None:
    repo, tag = ctx.plan.image_ref.repository, cosign_format.att_tag(ctx.plan.image.digest)
    layers = [
        la
        for la in cosign_format.layers_of(_attachment(ctx.client, repo, tag))
        if la.annotations.get(cosign_format.PREDICATE_ANNOTATION) != "https://cyclonedx.org/bom"
    ]
    assert len(layers) == 1
    _replace_attachment(ctx.client, repo, tag, layers)


class TamperContext:
    def __init__(
        self,
        registry: Registry,
        prefix: str,
        inputs: SyntheticRelease,
        other_inputs: SyntheticRelease,
        key: KeyPair,
        other_key: KeyPair,
        tmp: Path,
    ) -> None:
        self.registry, self.prefix, self.tmp = registry, prefix, tmp
        self.inputs, self.other_inputs = inputs, other_inputs
        self.key, self.signing_key, self.other_key = key, key, other_key
        self.client = client(registry)
        self.plan, _, _ = release(registry, prefix, inputs, key, tmp)

    def other_plan(self, publish: bool = True) -> ReleasePlan:
        plan, _, _ = release(
            self.registry,
            self.prefix,
            self.other_inputs,
            self.signing_key,
            self.tmp / "other",
            publish=publish,
        )
        return plan

    def republish(self, builder: str = BUILDER_ID, source: str = SOURCE_REPO) -> None:
        # Same image, re-attested by the same key but claiming another builder/source: the
        # .att tag now holds only the forged statements.
        c = self.client
        repo = self.plan.image_ref.repository
        c.delete_manifest(
            repo, c.manifest_digest(repo, cosign_format.att_tag(self.plan.image.digest)) or ""
        )
        release(
            self.registry,
            self.prefix,
            self.inputs,
            self.signing_key,
            self.tmp / "re",
            builder=builder,
            source=source,
        )


TAMPER_CASES = {
    # case: (tamper, expected reason prefix, what cosign is asked, cosign must reject)
    "wrong key": (tamper_wrong_key, "wrong key:", "verify", True),
    "tampered payload": (tamper_payload, "tampered signature payload:", "verify", True),
    "replayed signature": (tamper_replay, "signature replayed from another image:", "verify", True),
    "tag moved": (tamper_move_tag, "tag moved:", "verify-tag", True),
    # cosign never reads layers; skopeo (an independent client) must refuse the altered blob.
    "altered layer blob": (tamper_layer_blob, "layer 0 blob", "skopeo-copy", True),
    "provenance for another digest": (
        tamper_provenance_digest,
        "provenance is for another artefact:",
        "verify-attestation-slsa",
        True,
    ),
    "provenance from another builder": (
        tamper_builder,
        "provenance builder mismatch:",
        "verify-attestation-policy",
        True,
    ),
    "provenance from another source": (
        tamper_source,
        "provenance source mismatch:",
        "verify-attestation-policy",
        True,
    ),
    "missing SBOM": (tamper_missing_sbom, "missing SBOM:", "verify-attestation-cyclonedx", True),
}


def test_tamper_reasons_are_all_distinct() -> None:
    prefixes = [case[1] for case in TAMPER_CASES.values()]
    assert len(set(prefixes)) == len(prefixes)


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_release_fails_verify_with_its_own_reason(
    case: str,
    shared_registry: Registry,
    inputs_b: SyntheticRelease,
    keypair: KeyPair,
    other_keypair: KeyPair,
    tmp_path: Path,
    cosign: Path,
) -> None:
    tamper, reason, cosign_check, cosign_rejects = TAMPER_CASES[case]
    prefix = "tamper-" + case.replace(" ", "-").lower()
    # Own content per case: blobs are shared across repositories in the registry's store, and
    # the layer-blob case alters one in place.
    inputs = synthetic_release(tmp_path / "inputs", marker=prefix)
    ctx = TamperContext(shared_registry, prefix, inputs, inputs_b, keypair, other_keypair, tmp_path)
    # Untampered, the release verifies: the failure below is caused by the tampering alone.
    verifier(shared_registry, keypair.public).verify(pinned(ctx.plan))
    tamper(ctx)
    with pytest.raises(VerificationError) as failure:
        verifier(shared_registry, ctx.key.public).verify(pinned(ctx.plan))
    assert str(failure.value).startswith(reason), str(failure.value)

    if cosign_check is None:
        return
    env = cosign_env(tmp_path, shared_registry)
    image = ctx.plan.image_ref
    if cosign_check == "verify":
        code = cosign_verify(cosign, env, ctx.key.public, f"{image.name}@{ctx.plan.image.digest}")
    elif cosign_check == "verify-tag":
        code = cosign_verify(cosign, env, ctx.key.public, f"{image.name}:{ctx.plan.image_tag}")
    elif cosign_check == "skopeo-copy":
        policy = tmp_path / "skopeo-policy.json"
        policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        proc = subprocess.run(
            [
                "skopeo",
                "--policy",
                str(policy),
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"{shared_registry.username}:{shared_registry.password}",
                f"docker://{image.name}@{ctx.plan.image.digest}",
                f"oci:{tmp_path / 'copy'}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        code = proc.returncode
        assert "digest" in proc.stderr.lower(), proc.stderr
    elif cosign_check == "verify-attestation-policy":
        code = cosign_verify(
            cosign,
            env,
            ctx.key.public,
            f"{image.name}@{ctx.plan.image.digest}",
            "verify-attestation",
            "--type",
            "slsaprovenance1",
            "--policy",
            str(provenance_policy(tmp_path)),
        )
    elif cosign_check == "verify-attestation-slsa":
        code = cosign_verify(
            cosign,
            env,
            ctx.key.public,
            f"{image.name}@{ctx.plan.image.digest}",
            "verify-attestation",
            "--type",
            "slsaprovenance1",
        )
    else:
        code = cosign_verify(
            cosign,
            env,
            ctx.key.public,
            f"{image.name}@{ctx.plan.image.digest}",
            "verify-attestation",
            "--type",
            "cyclonedx",
        )
    assert (code != 0) == cosign_rejects, f"cosign exit {code} for {case}"

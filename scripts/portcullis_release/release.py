"""`make release`: every stage in order, by function call, verifying what was published before
the release manifest is written (a manifest must never pin something that does not verify).

Reads REGISTRY, AUTH_FILE, COSIGN_KEY and COSIGN_PASSWORD as cosign does. Without REGISTRY it
starts the throwaway local registry (``distribute.local_registry``); without COSIGN_KEY it makes a
throwaway key; both are said out loud, and a release made that way stays marked development.

The image is ``dist/image-multiarch`` (``make image-multiarch``): an image index over the
platform images. Each platform image is pushed, signed and attested (its own SBOM) under its own
digest, then the index under the version tag; the manifest and every generated copy pin the
index digest, which a runtime resolves to its node's platform. A single-image layout
(``--image dist/image``) still releases as before, amd64 only.

This is the only module that knows the order of the stages; the stages never call each other
back, and the CLI (``cli.py``) only parses arguments and calls :func:`run_release`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

from portcullis_release import REPO_ROOT, manifest
from portcullis_release.attest import cosign_keys, provenance, sbom, sign, vex
from portcullis_release.attest import plugin as plugin_attest
from portcullis_release.attest.attachments import write_attachments
from portcullis_release.attest.provenance import BuildRun, SourceInfo
from portcullis_release.attest.sbom import ImageInputs
from portcullis_release.build.plugin_artifact import load_or_build
from portcullis_release.distribute import generated, plugin_copies
from portcullis_release.distribute.chart import package_chart
from portcullis_release.distribute.flux import EXAMPLES_DIR, write_flux
from portcullis_release.distribute.flux_web import write_flux_web
from portcullis_release.distribute.local_registry import LocalRegistry, start_registry
from portcullis_release.distribute.plugin import publish_plugin
from portcullis_release.distribute.publish import publish_plan
from portcullis_release.distribute.registry import client_for
from portcullis_release.oci import Reference
from portcullis_release.plan import ReleasePlan
from portcullis_release.verify.plugin import verify_artifact
from portcullis_release.verify.policy import Policy
from portcullis_release.verify.verifier import Verifier

__all__ = ["ReleaseOptions", "ReleaseSummary", "env", "prepare", "run_release", "statements"]


@dataclass(frozen=True)
class ReleaseOptions:
    """Where `make release` reads its inputs and writes its outputs (the CLI's flags)."""

    # The multi-architecture layout (an image index); a single-image layout releases one image.
    image: Path = Path("dist/image-multiarch")
    chart_dir: Path = Path("dist/chart")
    release_dir: Path = Path("dist/release")
    manifest: Path = Path("release/manifest.yaml")
    flux_dir: Path = Path("deploy/flux")
    runtime_lock: Path = REPO_ROOT / "requirements/runtime.txt"
    packages_lock: Path = REPO_ROOT / "images/portcullis/packages.lock"
    deb_dir: Path = Path(".cache/image/debs")
    vex: Path = REPO_ROOT / "release/vex.json"
    # The tree whose generated copies (Chart.yaml, the docs block) a real release rewrites.
    tree: Path = REPO_ROOT
    skip_chart_build: bool = False
    # The kubectl-portcullis binary (`make login-binary`'s output directory): None releases
    # without it; built here unless skip_login_build (then the directory's build is used as is).
    login_dir: Path | None = None
    login_cache: Path = REPO_ROOT / ".cache" / "login"
    skip_login_build: bool = False


def statements(release_dir: Path, plan: ReleasePlan) -> dict[str, list[dict[str, Any]]]:
    """In-toto statements to attest per role, read from what `provenance` and `sbom` wrote."""
    out: dict[str, list[dict[str, Any]]] = {role: [] for role in plan.roles()}
    prov_path = release_dir / provenance.STATEMENT_FILE
    if prov_path.is_file():
        statement = json.loads(prov_path.read_text())
        for role in plan.roles():
            out[role].append(statement)
    vex_path = release_dir / vex.VEX_FILE
    if vex_path.is_file():
        out["image"].append(
            vex.statement(json.loads(vex_path.read_text()), plan.image_ref.name, plan.image.digest)
        )
    for role in plan.roles():
        path = release_dir / sbom.sbom_file(role)
        if path.is_file():
            ref = plan.ref_for(role)
            out[role].append(
                sbom.sbom_statement(
                    json.loads(path.read_text()), ref.name, plan.artifact_for(role).digest
                )
            )
    return out


def prepare(
    plan: ReleasePlan,
    release_dir: Path,
    key: ec.EllipticCurvePrivateKey,
    inputs: ImageInputs,
    source_dir: Path,
    run: BuildRun,
    source: SourceInfo | None = None,
    vex_file: Path | None = None,
) -> None:
    """SBOMs, VEX, provenance (signed) and the signed attachments, under ``release_dir``.

    ``source`` is detected from git in ``source_dir`` when not given; ``vex_file`` (OpenVEX) is
    bound to the image digest and attached to the image beside its SBOM.
    """
    sbom.write_image_sboms(release_dir, plan, inputs)
    if vex_file is not None:
        bound = vex.for_image(vex.load(vex_file), plan.image_ref.name, plan.image.digest)
        (release_dir / vex.VEX_FILE).write_text(json.dumps(bound, indent=2, sort_keys=True))
    if plan.chart is not None:
        sbom.write(release_dir, "chart", sbom.chart_bom(plan))
    provenance.write(release_dir, provenance.build_statement(plan, source_dir, run, source), key)
    attachments = sign.build_attachments(key, plan.targets(), statements(release_dir, plan))
    write_attachments(release_dir / "attachments", attachments)


def env(name: str) -> str | None:
    """An environment setting, treating empty as unset (Make passes empty variables)."""
    value = os.environ.get(name)
    return value or None


def _newest_chart(chart_dir: Path) -> Path:
    charts = sorted(chart_dir.glob("portcullis-*.tgz"), key=lambda p: p.stat().st_mtime)
    if not charts:
        raise FileNotFoundError(f"no chart in {chart_dir}: run `make chart`")
    return charts[-1]


def _local_registry(console: Console) -> tuple[LocalRegistry, str, Path]:
    """Start a local authenticated registry (docker-registry + htpasswd) for a self-contained
    release: (the registry, the REGISTRY prefix to publish to, its auth file)."""
    # A directory of its own per release: two releases at once (parallel tests, two shells)
    # must not rewrite each other's htpasswd or storage. Removed when the registry stops.
    cache = REPO_ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="release-registry-", dir=cache))
    local = start_registry(workdir, {"release": secrets.token_urlsafe(18)})
    console.print(
        f"[yellow]REGISTRY is not set:[/yellow] started a local authenticated registry "
        f"at {local.url} (credentials in {local.auth_file}); it stops when the release "
        "ends."
    )
    return local, f"{local.host}/portcullis", local.auth_file


def _signing_key(release_dir: Path, console: Console) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """COSIGN_KEY (with COSIGN_PASSWORD), or a throwaway key pair written under ``release_dir``;
    the flag says whether the key is throwaway."""
    key_file = env("COSIGN_KEY")
    if key_file is not None:
        return cosign_keys.load_private_key(Path(key_file), cosign_keys.password_from_env()), False
    password = os.environ.get("COSIGN_PASSWORD") or secrets.token_urlsafe(18)
    key_path, pub_path = cosign_keys.generate_key_pair(
        release_dir / "throwaway-key",
        password.encode(),
        pem=cosign_keys.fips_mode_enabled(),
    )
    (release_dir / "throwaway-key" / "password").write_text(password)
    console.print(
        f"[yellow]COSIGN_KEY is not set:[/yellow] made a throwaway key "
        f"{key_path} (public key {pub_path}); do not ship what it signs."
    )
    return cosign_keys.load_private_key(key_path, password.encode()), True


STAGES = (
    "image digest and manifest",
    "chart",
    "kubectl-portcullis binary",
    "SBOMs, provenance, signatures",
    "publish",
    "verify what was published",
    "manifest and Flux files",
)


class _Progress:
    """One line per stage as it ends (with its time), a spinner while it runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.number = 0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.number += 1
        label = f"[{self.number}/{len(STAGES)}] {name}"
        started = time.monotonic()
        with self.console.status(label):
            yield
        self.console.print(f"[green]done[/green] {label} ({time.monotonic() - started:.1f} s)")


@dataclass
class ReleaseSummary:
    """What the final table shows: per artefact its reference, digest, size and what verified."""

    registry: str
    development: bool
    manifest: Path
    rows: list[tuple[str, str, str, int, list[str]]] = field(default_factory=list)

    def render(self, console: Console) -> None:
        table = Table(title="release summary", show_lines=True)
        for column in ("artefact", "reference", "digest", "size", "verified"):
            table.add_column(column)
        for role, ref, digest, size, notes in self.rows:
            table.add_row(role, ref, digest, f"{size / 1e6:.1f} MB", "\n".join(notes))
        console.print(table)
        kind = "development (rehearsal: do not deploy)" if self.development else "release"
        console.print(f"registry {self.registry}; {kind}; manifest {self.manifest}")


def _artifact_size(plan: ReleasePlan, role: str) -> int:
    """Bytes a pull transfers: the manifest and every blob it references."""
    artifact = plan.artifact_for(role)
    return len(artifact.manifest) + sum(len(blob) for blob in artifact.blobs.values())


def _check_revision(layout: Path, console: Console) -> None:
    """Say so when the layout was built from another commit than the one being released (its
    provenance would name this commit as the source): `make release` rebuilds it first."""
    index = json.loads((layout / "index.json").read_text())
    entries = index.get("manifests") or []
    digest = entries[0].get("digest", "") if entries else ""
    blob = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if not digest or not blob.is_file():
        return
    built = (json.loads(blob.read_bytes()).get("annotations") or {}).get(
        "org.opencontainers.image.revision"
    )
    head = provenance.SourceInfo.detect(REPO_ROOT).commit
    if built and head and built != head:
        console.print(
            f"[yellow]{layout} was built from commit {built}, this checkout is {head}[/yellow]: "
            "rebuild it (`make image-multiarch`) so the provenance names the commit it was "
            "built from"
        )


def run_release(options: ReleaseOptions, console: Console) -> int:
    """`make release`: every step in order, verifying what was published before writing the
    release manifest (a manifest must never pin something that does not verify)."""
    run = BuildRun(
        builder_id=env("BUILDER_ID") or provenance.DEFAULT_BUILDER_ID,
        started_on=dt.datetime.now(dt.UTC),
    )
    release_dir = options.release_dir
    release_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(console)
    local = None
    auth_path: Path | None
    registry, auth_file = env("REGISTRY"), env("AUTH_FILE")
    if registry is None:
        local, registry, auth_path = _local_registry(console)
    else:
        auth_path = Path(auth_file) if auth_file else None
        if auth_path is None:
            console.print("[yellow]AUTH_FILE is not set:[/yellow] pushing anonymously")
    try:
        key, throwaway = _signing_key(release_dir, console)
        (release_dir / "cosign.pub").write_bytes(cosign_keys.public_pem(key))

        # Signed by a throwaway key or pushed into a registry that stops with this command, the
        # release is a rehearsal: its manifest and Flux files go under the release directory and
        # the tracked release/manifest.yaml and deploy/flux/ stay as they are.
        development = local is not None or throwaway
        manifest_out, flux_out = (
            (release_dir / "manifest.yaml", release_dir / "flux")
            if development
            else (options.manifest, options.flux_dir)
        )
        with progress.stage(STAGES[0]):
            if not (options.image / "index.json").is_file():
                raise FileNotFoundError(
                    f"{options.image} is not an OCI layout: run `make image-multiarch` (or pass "
                    "--image dist/image to release the amd64 image alone)"
                )
            image_plan = ReleasePlan.load(options.image, None, registry)
            _check_revision(options.image, console)
            man = manifest.load_manifest(options.manifest).with_image(
                repository=image_plan.image_ref.name,
                tag=image_plan.image_tag,
                digest=image_plan.image.digest,
            )
            console.print(
                f"image {image_plan.image_ref.name}:{image_plan.image_tag} "
                f"{image_plan.image.digest}" + (" (image index)" if image_plan.platforms else "")
            )
            for arch, platform_image in image_plan.platforms.items():
                console.print(f"  linux/{arch} {platform_image.digest}")
        with progress.stage(STAGES[1]):
            if not options.skip_chart_build:
                packaged = package_chart(man, output_dir=options.chart_dir)
                console.print(f"packaged the chart: {packaged.path} {packaged.digest}")
            plan = ReleasePlan.load(options.image, _newest_chart(options.chart_dir), registry)
        with progress.stage(STAGES[2]):
            plugin = None
            if options.login_dir is None:
                console.print("no --login-dir: this release has no kubectl-portcullis binary")
            else:
                log: list[str] = []
                plugin = load_or_build(
                    options.login_dir, options.login_cache, options.skip_login_build, log
                )
                for line in [*log, f"kubectl-portcullis {plugin.platform} sha256 {plugin.sha256}"]:
                    console.print(line)
        with progress.stage(STAGES[3]):
            inputs = ImageInputs(
                runtime_lock=options.runtime_lock,
                packages_lock=options.packages_lock,
                deb_dir=options.deb_dir if options.deb_dir.is_dir() else None,
            )
            if not inputs.packages_lock or not inputs.packages_lock.is_file():
                inputs.packages_lock = None
            run.finished_on = dt.datetime.now(dt.UTC)
            vex_file = options.vex if options.vex.is_file() else None
            prepare(plan, release_dir, key, inputs, REPO_ROOT, run, vex_file=vex_file)
            if plugin is not None:
                plugin_ref = plugin.reference(registry)
                plugin_attest.prepare_plugin(plugin, plugin_ref, release_dir, key, REPO_ROOT, run)
        with progress.stage(STAGES[4]):
            report = publish_plan(plan, release_dir, auth_path, console=console)
            console.print(f"published: {report.summary()}")
            if plugin is not None:
                plugin_report = publish_plugin(
                    plugin, registry, release_dir, auth_path, console=console
                )
                console.print(f"published kubectl-portcullis: {plugin_report.summary()}")
        source = SourceInfo.detect(REPO_ROOT).repository
        if source is None:
            console.print(
                "[yellow]no source repository known[/yellow] (SOURCE_REPOSITORY, "
                "source.repository in release/manifest.yaml, or a git remote 'origin'): the "
                "provenance names none and verification cannot check it"
            )
        policy = Policy(builder_id=run.builder_id, source_repository=source)
        summary = ReleaseSummary(registry, development, manifest_out)
        # Verified from the registry, by digest, with only the public key: what a user's
        # `portcullis-release verify` does, so a release that passes here verifies there.
        with progress.stage(STAGES[5]), client_for(plan.image_ref, auth_path) as client:
            # The index's verification follows it into every platform image (each a row).
            for role in plan.top_roles():
                # The VEX document describes the image (the chart has no vulnerable code).
                with_vex = replace(policy, require_vex=role == "image" and vex_file is not None)
                verifier = Verifier(client, key.public_key(), with_vex)
                ref = plan.ref_for(role).with_tag(plan.tag_for(role))
                digest = plan.artifact_for(role).digest
                result = verifier.verify(Reference.parse(f"{ref}@{digest}"))
                notes = [f"{result.blobs_checked} blobs by digest", *result.notes]
                summary.rows.append((role, str(ref), digest, _artifact_size(plan, role), notes))
                by_digest = {plan.artifact_for(r).digest: r for r in plan.platform_roles()}
                for child in result.platforms:
                    size = _artifact_size(plan, by_digest[child.digest])
                    summary.rows.append(
                        (
                            f"image {child.platform}",
                            str(child.reference),
                            child.digest,
                            size,
                            child.notes,
                        )
                    )
            if plugin is not None:
                # The binary's own checks too: its sha256 named by the provenance and the SBOM,
                # and the file this release built is the one the registry now serves.
                artifact = plugin.artifact()
                ref = plugin.reference(registry).with_tag(plugin.tag())
                result = verify_artifact(
                    Verifier(client, key.public_key(), policy),
                    Reference.parse(f"{ref}@{artifact.digest}"),
                    plugin.binary,
                )
                notes = [f"{result.blobs_checked} blobs by digest", *result.notes]
                size = len(artifact.manifest) + sum(len(b) for b in artifact.blobs.values())
                summary.rows.append(("kubectl-portcullis", str(ref), artifact.digest, size, notes))
        with progress.stage(STAGES[6]):
            data = {
                **man.to_data(),
                "development": development,
                "chart": {
                    "repository": plan.chart_ref.name,
                    "version": plan.chart_version,
                    "digest": plan.artifact_for("chart").digest,
                },
            }
            # A release without the binary pins none: an older section would name a binary
            # this release did not verify.
            data.pop("plugin", None)
            if plugin is not None:
                data["plugin"] = plugin.manifest_section(registry)
            final = manifest.parse_manifest(data, source="release")
            manifest.dump_manifest(final, manifest_out)
            console.print(f"wrote {manifest_out}")
            # Every copy of its versions and digests is regenerated with the manifest: the
            # published index always (under the release directory), the tracked copies
            # (Chart.yaml, deploy/flux/, docs) only for a real release.
            written = write_flux(final, flux_out, allow_development=final.development)
            # The Flux Web UI examples pin the same digests: deploy/flux/ is written whole.
            written += write_flux_web(
                final, flux_out / EXAMPLES_DIR, allow_development=final.development
            )
            if not development:
                written += generated.write_tracked(final, options.tree, flux_files=False)
            written += generated.write_index(final, release_dir / "index")
            if plugin is not None:
                # The krew manifest beside the files it describes (when a download URL is known).
                for rel, text in plugin_copies.render(final).items():
                    if rel == plugin_copies.KREW_FILE:
                        path = release_dir / plugin_attest.PLUGIN_DIR / rel.name
                        path.write_text(text)
                        written.append(path)
            for path in written:
                console.print(f"wrote {path}")
        summary.render(console)
        if development:
            console.print(
                f"development release: {options.manifest} and {options.flux_dir} are unchanged"
            )
        return 0
    finally:
        if local is not None:
            local.stop()
            # root is <workdir>/registry (start_registry); the whole workdir is this run's.
            shutil.rmtree(local.root.parent, ignore_errors=True)

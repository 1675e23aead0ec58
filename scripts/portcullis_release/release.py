"""What a release is (image + chart at named repositories) and the `make release` orchestration.

``ReleasePlan`` is the single place that decides repository names and tags from the artefacts,
so `sbom`, `provenance`, `sign`, `publish` and `release` can never disagree about which digest
they are talking about.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release import oci
from portcullis_release.oci import Artifact
from portcullis_release.registry import Reference

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_REPOSITORY = "portcullis"
CHART_REPOSITORY = "charts/portcullis"


def app_version() -> str:
    try:
        return metadata.version("portcullis")
    except metadata.PackageNotFoundError:
        from portcullis_release import __version__

        return __version__


def chart_created(tgz: bytes) -> str:
    """The chart's creation time, taken from the newest entry in its archive (a reproducible
    chart has fixed mtimes), so the chart manifest digest depends on the chart alone."""
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        newest = max((m.mtime for m in tar.getmembers()), default=0)
    return dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ReleasePlan:
    """The artefacts of one release and where they go."""

    registry: str
    image: Artifact
    image_tag: str
    chart: Artifact | None = None
    chart_tgz: bytes = b""
    chart_version: str = ""

    @classmethod
    def load(cls, image_dir: Path, chart_tgz: Path | None, registry: str) -> ReleasePlan:
        image = oci.read_layout(image_dir)
        tag = app_version()
        index = json.loads((image_dir / "index.json").read_text())
        names = [m.get("annotations", {}).get(oci.REF_NAME) for m in index.get("manifests", [])]
        if names and names[0] and ":" not in names[0] and "/" not in names[0]:
            tag = names[0]
        plan = cls(registry.rstrip("/"), image, tag)
        if chart_tgz is not None:
            data = chart_tgz.read_bytes()
            plan.chart_tgz = data
            plan.chart = oci.chart_artifact(data, chart_created(data))
            plan.chart_version = str(oci.chart_metadata(data)["version"])
        return plan

    def _ref(self, repository: str) -> Reference:
        return Reference.parse(f"{self.registry}/{repository}")

    @property
    def image_ref(self) -> Reference:
        return self._ref(IMAGE_REPOSITORY)

    @property
    def chart_ref(self) -> Reference:
        return self._ref(CHART_REPOSITORY)

    @property
    def chart_tag(self) -> str:
        return self.chart_version.replace("+", "_")

    def ref_for(self, role: str) -> Reference:
        return self.image_ref if role == "image" else self.chart_ref

    def artifact_for(self, role: str) -> Artifact:
        if role == "image":
            return self.image
        if self.chart is None:
            raise ValueError("this release has no chart")
        return self.chart

    def roles(self) -> list[str]:
        return ["image", "chart"] if self.chart is not None else ["image"]

    def targets(self) -> dict[str, tuple[str, str]]:
        """role -> (docker reference, manifest digest), what signatures name."""
        return {
            role: (self.ref_for(role).name, self.artifact_for(role).digest) for role in self.roles()
        }

    def tag_for(self, role: str) -> str:
        return self.image_tag if role == "image" else self.chart_tag


def statements(release_dir: Path, plan: ReleasePlan) -> dict[str, list[dict[str, Any]]]:
    """In-toto statements to attest per role, read from what `provenance` and `sbom` wrote."""
    import portcullis_release.provenance as provenance
    import portcullis_release.sbom as sbom

    out: dict[str, list[dict[str, Any]]] = {role: [] for role in plan.roles()}
    prov_path = release_dir / provenance.STATEMENT_FILE
    if prov_path.is_file():
        statement = json.loads(prov_path.read_text())
        for role in plan.roles():
            out[role].append(statement)
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
    inputs: Any,
    source_dir: Path,
    run: Any,
    source: Any = None,
) -> None:
    """SBOMs, provenance (signed) and the signed attachments, all written under ``release_dir``.

    ``inputs`` is an :class:`sbom.ImageInputs`, ``run`` a :class:`provenance.BuildRun`,
    ``source`` an optional :class:`provenance.SourceInfo` (detected from git otherwise).
    """
    import portcullis_release.provenance as provenance
    import portcullis_release.sbom as sbom
    import portcullis_release.sign as sign

    sbom.write(release_dir, "image", sbom.image_bom(plan, inputs))
    if plan.chart is not None:
        sbom.write(release_dir, "chart", sbom.chart_bom(plan))
    provenance.write(release_dir, provenance.build_statement(plan, source_dir, run, source), key)
    attachments = sign.build_attachments(key, plan.targets(), statements(release_dir, plan))
    sign.write_attachments(release_dir / "attachments", attachments)


def env(name: str) -> str | None:
    """An environment setting, treating empty as unset (Make passes empty variables)."""
    value = os.environ.get(name)
    return value or None


def _newest_chart(chart_dir: Path) -> Path:
    charts = sorted(chart_dir.glob("portcullis-*.tgz"), key=lambda p: p.stat().st_mtime)
    if not charts:
        raise FileNotFoundError(f"no chart in {chart_dir}: run `make chart`")
    return charts[-1]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "release",
        help="the whole release: chart, SBOM, provenance, sign, publish, verify, manifest",
        description="Reads REGISTRY, AUTH_FILE, COSIGN_KEY and COSIGN_PASSWORD like cosign. "
        "Without REGISTRY it starts a local authenticated registry; without COSIGN_KEY it makes "
        "a throwaway key, and says so.",
    )
    parser.add_argument("--image", type=Path, default=Path("dist/image"))
    parser.add_argument("--chart-dir", type=Path, default=Path("dist/chart"))
    parser.add_argument("--release-dir", type=Path, default=Path("dist/release"))
    parser.add_argument("--manifest", type=Path, default=Path("release/manifest.yaml"))
    parser.add_argument("--flux-dir", type=Path, default=Path("deploy/flux"))
    parser.add_argument("--runtime-lock", type=Path, default=REPO_ROOT / "requirements/runtime.txt")
    parser.add_argument(
        "--packages-lock", type=Path, default=REPO_ROOT / "images/portcullis/packages.lock"
    )
    parser.add_argument("--deb-dir", type=Path, default=Path(".cache/image/debs"))
    parser.add_argument(
        "--skip-chart-build",
        action="store_true",
        help="use the newest chart in --chart-dir as it is",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        return run_release(args, console)
    except Exception as exc:
        from portcullis_release.registry import RegistryError
        from portcullis_release.verify import VerificationError

        if isinstance(exc, RegistryError | VerificationError | FileNotFoundError | ValueError):
            console.print(f"[red]release failed:[/red] {exc}")
            return 1
        raise


def _local_registry(console: Any) -> tuple[Any, str, Path]:
    """Start the test-suite registry (docker-registry + htpasswd) for a self-contained release."""
    import secrets
    import sys

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.support.registry import start_registry

    local = start_registry(
        REPO_ROOT / ".cache" / "release-registry", {"release": secrets.token_urlsafe(18)}
    )
    console.print(
        f"[yellow]REGISTRY is not set:[/yellow] started a local authenticated registry "
        f"at {local.url} (credentials in {local.auth_file}); it stops when the release "
        "ends."
    )
    return local, f"{local.host}/portcullis", local.auth_file


def run_release(args: argparse.Namespace, console: Any) -> int:
    """`make release`: every step in order, verifying what was published before writing the
    release manifest (a manifest must never pin something that does not verify)."""
    import datetime as dt
    import secrets
    import subprocess
    import sys

    import portcullis_release.provenance as provenance
    import portcullis_release.sbom as sbom
    from portcullis_release import cosign_keys, manifest
    from portcullis_release.publish import publish_plan
    from portcullis_release.registry import client_for
    from portcullis_release.verify import Policy, Verifier

    run = provenance.BuildRun(
        builder_id=env("BUILDER_ID") or provenance.DEFAULT_BUILDER_ID,
        started_on=dt.datetime.now(dt.UTC),
    )
    release_dir: Path = args.release_dir
    release_dir.mkdir(parents=True, exist_ok=True)
    local = None
    throwaway = False
    auth_path: Path | None
    registry, auth_file = env("REGISTRY"), env("AUTH_FILE")
    if registry is None:
        local, registry, auth_path = _local_registry(console)
    else:
        auth_path = Path(auth_file) if auth_file else None
        if auth_path is None:
            console.print("[yellow]AUTH_FILE is not set:[/yellow] pushing anonymously")
    try:
        key_file = env("COSIGN_KEY")
        if key_file is None:
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
            key = cosign_keys.load_private_key(key_path, password.encode())
            throwaway = True
        else:
            key = cosign_keys.load_private_key(Path(key_file), cosign_keys.password_from_env())
        (release_dir / "cosign.pub").write_bytes(cosign_keys.public_pem(key))

        with console.status("release: image digest and manifest") as status:
            image_plan = ReleasePlan.load(args.image, None, registry)
            man = manifest.load_manifest(args.manifest).with_image(
                repository=image_plan.image_ref.name,
                tag=image_plan.image_tag,
                digest=image_plan.image.digest,
            )
            manifest.dump_manifest(man, args.manifest)
            if not args.skip_chart_build:
                status.update("release: packaging the chart for this image")
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "portcullis_release.cli",
                        "chart",
                        "--manifest",
                        str(args.manifest),
                        "--output",
                        str(args.chart_dir),
                    ],
                    check=True,
                )
            plan = ReleasePlan.load(args.image, _newest_chart(args.chart_dir), registry)
            status.update("release: SBOMs, provenance, signatures")
            inputs = sbom.ImageInputs(
                runtime_lock=args.runtime_lock,
                packages_lock=args.packages_lock,
                deb_dir=args.deb_dir if args.deb_dir.is_dir() else None,
            )
            if not inputs.packages_lock or not inputs.packages_lock.is_file():
                inputs.packages_lock = None
            run.finished_on = dt.datetime.now(dt.UTC)
            prepare(plan, release_dir, key, inputs, REPO_ROOT, run)
        report = publish_plan(plan, release_dir, auth_path, console=console)
        console.print(f"published: {report.summary()}")
        source = provenance.SourceInfo.detect(REPO_ROOT).repository
        policy = Policy(builder_id=run.builder_id, source_repository=source)
        with (
            client_for(plan.image_ref, auth_path) as client,
            console.status("release: verifying what was published"),
        ):
            verifier = Verifier(client, key.public_key(), policy)
            for role in plan.roles():
                ref = plan.ref_for(role).with_tag(plan.tag_for(role))
                pinned = f"{ref}@{plan.artifact_for(role).digest}"
                verifier.verify(type(ref).parse(pinned))
                console.print(f"verified {pinned}")
        final = manifest.parse_manifest(
            {
                **man.to_data(),
                # Signed by a throwaway key into a registry that stops with this command, the
                # release is a rehearsal, not something to deploy: keep it marked development.
                "development": local is not None or throwaway,
                "chart": {
                    "repository": plan.chart_ref.name,
                    "version": plan.chart_version,
                    "digest": plan.artifact_for("chart").digest,
                },
            },
            source="release",
        )
        manifest.dump_manifest(final, args.manifest)
        console.print(f"wrote {args.manifest}")
        # deploy/flux/ pins exactly the manifest's digests: regenerate it with the manifest.
        flux = [
            sys.executable,
            "-m",
            "portcullis_release.cli",
            "flux",
            "--manifest",
            str(args.manifest),
            "--output",
            str(args.flux_dir),
        ]
        if final.development:
            flux.append("--allow-development")
        subprocess.run(flux, check=True)
        return 0
    finally:
        if local is not None:
            local.stop()

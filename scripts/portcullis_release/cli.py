"""`portcullis-release`: the command line, and only the command line.

Every subcommand parses its flags here and calls the stage's functions; no stage module knows
about argparse, and no stage imports this module (the top of the package, as sigstore-python keeps
its CLI in ``_cli.py``). Subcommands, in the order `--help` lists them: image, manifest, chart,
flux, sbom, provenance, sign, publish, verify, plugin, release.

Exit codes: 0 success, 1 a check failed (verification, `flux --check`, a failed image build or
release), 2 bad input or an environment problem (unreadable manifest, registry refused us...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from rich.console import Console

from portcullis_release import release
from portcullis_release.attest import cosign_keys, provenance, sbom, sign, vex
from portcullis_release.attest import plugin as plugin_attest
from portcullis_release.attest.attachments import write_attachments
from portcullis_release.build import (
    debs,
    emulation,
    fips_provider,
    freeze,
    image,
    login_binary,
    login_contents,
)
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.build.plugin_artifact import PluginBuild, PluginError
from portcullis_release.distribute import chart, dex_values, flux, flux_web, generated
from portcullis_release.distribute import plugin as plugin_distribute
from portcullis_release.distribute.local_registry import LocalRegistryError
from portcullis_release.distribute.publish import publish_plan
from portcullis_release.distribute.registry import RegistryError, client_for
from portcullis_release.manifest import (
    DEFAULT_MANIFEST,
    ManifestError,
    dump_manifest,
    load_manifest,
    parse_manifest,
    render_manifest,
)
from portcullis_release.oci import Reference
from portcullis_release.plan import ReleasePlan
from portcullis_release.upstream import apply as upstream_apply
from portcullis_release.upstream import feeds as upstream_feeds
from portcullis_release.upstream import track as upstream_track
from portcullis_release.verify.plugin import verify_artifact
from portcullis_release.verify.policy import Policy
from portcullis_release.verify.verifier import VerificationError, Verifier

__all__ = ["build_parser", "main"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    """``--auth-file`` and ``--plain-http``, shared by every subcommand that talks to a registry."""
    parser.add_argument(
        "--auth-file",
        type=Path,
        default=Path(os.environ["AUTH_FILE"]) if os.environ.get("AUTH_FILE") else None,
        help="docker config JSON with the registry credentials (default: AUTH_FILE)",
    )
    parser.add_argument(
        "--plain-http",
        action="store_true",
        default=None,
        help="speak HTTP (default only for loopback registries)",
    )


def _add_release_inputs(parser: argparse.ArgumentParser, *, registry_required: bool) -> None:
    """``--image``, ``--chart`` and ``--registry``: what makes a ``ReleasePlan``."""
    parser.add_argument("--image", type=Path, default=Path("dist/image"), help="OCI image layout")
    parser.add_argument("--chart", type=Path, help="packaged chart .tgz (dist/chart/...)")
    if registry_required:
        parser.add_argument(
            "--registry", required=True, help="registry prefix, e.g. 127.0.0.1:5000/portcullis"
        )


# ---- image ------------------------------------------------------------------------------------


_IMAGE_ERRORS = (
    image.ImageError,
    debs.DebError,
    fips_provider.FipsBuildError,
    freeze.FreezeError,
    emulation.EmulationError,
    ValueError,
)


def _cmd_image_build(args: argparse.Namespace) -> int:
    repo = image.repo_root()
    log: list[str] = []
    started = time.monotonic()
    try:
        result = image.build(
            repo,
            Path(args.output).resolve(),
            Path(args.cache).resolve(),
            source_url=args.source_url,
            fresh=args.fresh,
            log=log,
            architecture=args.arch,
        )
    except _IMAGE_ERRORS as exc:
        for line in log:
            print(f"  {line}")
        print(f"portcullis-release image build: {exc}")
        return 1
    for line in log:
        print(f"  {line}")
    print(
        f"image {result.layout}:{result.tag} {result.manifest_digest} "
        f"({result.compressed_size / 1e6:.1f} MB compressed, "
        f"{result.uncompressed_size / 1e6:.1f} MB uncompressed, "
        f"{time.monotonic() - started:.1f} s)"
    )
    return 0


def _cmd_image_index(args: argparse.Namespace) -> int:
    repo = image.repo_root()
    log: list[str] = []
    started = time.monotonic()
    try:
        result = image.build_index(
            repo,
            Path(args.output).resolve(),
            Path(args.cache).resolve(),
            architectures=tuple(args.arch or image.ARCHITECTURES),
            source_url=args.source_url,
            log=log,
        )
    except _IMAGE_ERRORS as exc:
        for line in log:
            print(f"  {line}")
        print(f"portcullis-release image index: {exc}")
        return 1
    for line in log:
        print(f"  {line}")
    for one in result.images:
        print(f"  linux/{one.architecture} {one.manifest_digest}")
    print(
        f"index {result.layout}:{result.tag} {result.index_digest} "
        f"({time.monotonic() - started:.1f} s)"
    )
    return 0


def _cmd_image_lock(args: argparse.Namespace) -> int:
    repo = image.repo_root()
    log: list[str] = []
    lock = image.relock(repo, Path(args.cache).resolve(), args.fips_version, log, args.arch)
    for line in log:
        print(f"  {line}")
    print(
        f"pinned {len(lock.debs)} {lock.architecture} packages"
        + (f" ({len(lock.build_debs)} in the build root)" if lock.build_debs else "")
        + f" and openssl {lock.fips_provider.source_version}"
    )
    return 0


def _register_image(sub: Subparsers) -> None:
    parser = sub.add_parser("image", help="build the frozen distroless FIPS server image")
    image_sub = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build_p = image_sub.add_parser("build", help="write the OCI image layout (dist/image)")
    build_p.add_argument("--output", default="dist/image", help="layout directory (replaced)")
    build_p.add_argument("--cache", default=".cache/image", help="download and build cache")
    build_p.add_argument("--source-url", help="org.opencontainers.image.source label")
    build_p.add_argument(
        "--fresh", action="store_true", help="freeze again even if an identical build is cached"
    )
    build_p.add_argument(
        "--arch",
        choices=image.ARCHITECTURES,
        help="architecture to build (default: this machine's; others run under qemu)",
    )
    build_p.set_defaults(handler=_cmd_image_build)
    index_p = image_sub.add_parser(
        "index", help="build every architecture and write a layout tagged with an image index"
    )
    index_p.add_argument("--output", default="dist/image-multiarch", help="layout (replaced)")
    index_p.add_argument("--cache", default=".cache/image", help="download and build cache")
    index_p.add_argument("--source-url", help="org.opencontainers.image.source label")
    index_p.add_argument(
        "--arch",
        action="append",
        choices=image.ARCHITECTURES,
        help="only these architectures (repeatable; default: all)",
    )
    index_p.set_defaults(handler=_cmd_image_index)
    lock_p = image_sub.add_parser("lock", help="re-pin Debian packages in packages.lock")
    lock_p.add_argument("--cache", default=".cache/image")
    lock_p.add_argument("--fips-version", help="Debian openssl source version to build and pin")
    lock_p.add_argument(
        "--arch",
        choices=image.ARCHITECTURES,
        help="re-pin packages-<arch>.lock (with its emulated build root) instead",
    )
    lock_p.set_defaults(handler=_cmd_image_lock)


# ---- manifest -----------------------------------------------------------------------------------


def _cmd_manifest_show(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.manifest)
        if args.require_release:
            manifest.require_release()
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(render_manifest(manifest), end="")
    return 0


def _cmd_manifest_set(args: argparse.Namespace) -> int:
    image_fields = {k: v for k, v in (("tag", args.image_tag), ("digest", args.image_digest)) if v}
    if args.image_repository:
        image_fields["repository"] = args.image_repository
    chart_fields = {
        k: v for k, v in (("version", args.chart_version), ("digest", args.chart_digest)) if v
    }
    if args.chart_repository:
        chart_fields["repository"] = args.chart_repository
    try:
        manifest = load_manifest(args.manifest)
        if image_fields:
            manifest = manifest.with_image(**image_fields)
        if chart_fields:
            manifest = manifest.with_chart(**chart_fields)
        if args.release:
            manifest = parse_manifest({**manifest.to_data(), "development": False})
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 2
    dump_manifest(manifest, args.manifest)
    return 0


def _register_manifest(sub: Subparsers) -> None:
    parser = sub.add_parser("manifest", help="show or update release/manifest.yaml")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="manifest path")
    actions = parser.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="validate and print the manifest")
    show.add_argument(
        "--require-release", action="store_true", help="fail on development/placeholder values"
    )
    show.set_defaults(handler=_cmd_manifest_show)

    update = actions.add_parser("set", help="replace image/chart fields and rewrite the file")
    update.add_argument("--image-repository")
    update.add_argument("--image-tag")
    update.add_argument("--image-digest")
    update.add_argument("--chart-repository")
    update.add_argument("--chart-version")
    update.add_argument("--chart-digest")
    update.add_argument(
        "--release", action="store_true", help="mark as a release (clears `development`)"
    )
    update.set_defaults(handler=_cmd_manifest_set)


# ---- chart and flux -----------------------------------------------------------------------------


def _cmd_chart(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.manifest)
        packaged = chart.package_chart(manifest, chart_dir=args.chart_dir, output_dir=args.output)
    except (ManifestError, chart.ChartError) as exc:
        print(f"portcullis-release chart: {exc}", file=sys.stderr)
        return 2
    print(f"{packaged.path} {packaged.digest}")
    return 0


def _register_chart(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "chart", help="package chart/portcullis as dist/chart/portcullis-<version>.tgz"
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="release manifest")
    parser.add_argument("--chart-dir", type=Path, default=chart.CHART_DIR, help="chart sources")
    parser.add_argument("--output", type=Path, default=chart.DIST_DIR, help="output directory")
    parser.set_defaults(handler=_cmd_chart)
    actions = parser.add_subparsers(dest="chart_action", metavar="ACTION")
    migrate = actions.add_parser(
        "migrate-values",
        help="print Portcullis chart values for a values file of the upstream dex chart (0.24), "
        "with every difference as a comment",
    )
    migrate.add_argument("file", type=Path, help="values file written for the dex chart")
    migrate.set_defaults(handler=_cmd_chart_migrate_values)


def _cmd_chart_migrate_values(args: argparse.Namespace) -> int:
    try:
        dex = dex_values.load_dex_values(args.file)
    except dex_values.DexValuesError as exc:
        print(f"portcullis-release chart migrate-values: {exc}", file=sys.stderr)
        return 2
    migration = dex_values.migrate_values(dex)
    print(dex_values.render_migration(migration, str(args.file)), end="")
    for blocker in migration.blockers:
        print(f"portcullis-release chart migrate-values: {blocker}", file=sys.stderr)
    return 1 if migration.blockers else 0


def _cmd_flux(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.manifest)
        if args.check:
            problems = flux.diff_flux(manifest, args.output, allow_development=manifest.development)
            problems += [
                f"{flux.EXAMPLES_DIR}/{problem}"
                for problem in flux_web.diff_flux_web(
                    manifest,
                    args.output / flux.EXAMPLES_DIR,
                    allow_development=manifest.development,
                )
            ]
            for problem in problems:
                print(f"{args.output}/{problem}", file=sys.stderr)
            return 1 if problems else 0
        paths = flux.write_flux(manifest, args.output, allow_development=args.allow_development)
        paths += flux_web.write_flux_web(
            manifest,
            args.output / flux.EXAMPLES_DIR,
            allow_development=args.allow_development,
        )
    except ManifestError as exc:
        print(f"portcullis-release flux: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    try:
        manifest = load_manifest(args.manifest)
        if args.check:
            problems = generated.check(manifest, index_dir=args.index)
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        paths = generated.write_tracked(manifest)
        if args.index is not None:
            paths += generated.write_index(manifest, args.index)
    except (ManifestError, ValueError, OSError) as exc:
        print(f"portcullis-release generate: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _register_generate(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "generate",
        help="regenerate every copy of the manifest's versions and digests (Chart.yaml, "
        "deploy/flux/, docs, the published index)",
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="release manifest")
    parser.add_argument(
        "--index",
        type=Path,
        help="also write (or --check) the published index under this directory",
    )
    parser.add_argument(
        "--check", action="store_true", help="only report copies that differ (exit 1 if any)"
    )
    parser.set_defaults(handler=_cmd_generate)


def _register_flux(sub: Subparsers) -> None:
    parser = sub.add_parser("flux", help="generate deploy/flux/ from release/manifest.yaml")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="release manifest")
    parser.add_argument("--output", type=Path, default=flux.DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--allow-development",
        action="store_true",
        help="accept a development manifest (placeholder digests)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only report files that differ (exit 1 if any)"
    )
    parser.set_defaults(handler=_cmd_flux)


# ---- sbom, provenance, sign ---------------------------------------------------------------------


def _cmd_sbom(args: argparse.Namespace) -> int:
    plan = ReleasePlan.load(args.image, args.chart, args.registry)
    inputs = sbom.ImageInputs(
        runtime_lock=args.runtime_lock if args.runtime_lock.is_file() else None,
        packages_lock=args.packages_lock if args.packages_lock.is_file() else None,
        deb_dir=args.deb_dir,
    )
    for path in sbom.write_image_sboms(args.release_dir, plan, inputs):
        print(f"sbom: {path}")
    if plan.chart is not None:
        print(f"sbom: {sbom.write(args.release_dir, 'chart', sbom.chart_bom(plan))}")
    vex_file = release.ReleaseOptions().vex
    if vex_file.is_file():
        # The VEX document travels with the SBOM: `sign` attests both for the image.
        bound = vex.for_image(vex.load(vex_file), plan.image_ref.name, plan.image.digest)
        out = args.release_dir / vex.VEX_FILE
        out.write_text(json.dumps(bound, indent=2, sort_keys=True))
        print(f"vex: {out}")
    return 0


def _register_sbom(sub: Subparsers) -> None:
    parser = sub.add_parser("sbom", help="CycloneDX 1.6 SBOMs for the image and the chart")
    _add_release_inputs(parser, registry_required=True)
    parser.add_argument("--runtime-lock", type=Path, default=Path("requirements/runtime.txt"))
    parser.add_argument(
        "--packages-lock", type=Path, default=Path("images/portcullis/packages.lock")
    )
    parser.add_argument("--deb-dir", type=Path, help="directory holding the pinned .deb files")
    parser.add_argument("--release-dir", type=Path, default=Path("dist/release"))
    parser.set_defaults(handler=_cmd_sbom)


def _cmd_provenance(args: argparse.Namespace) -> int:
    plan = ReleasePlan.load(args.image, args.chart, args.registry)
    run = provenance.BuildRun(builder_id=args.builder_id)
    if args.started_on:
        run.started_on = dt.datetime.fromisoformat(args.started_on.replace("Z", "+00:00"))
    statement = provenance.build_statement(plan, args.source_dir.resolve(), run)
    key = cosign_keys.load_signing_key(args.key) if args.key else None
    provenance.write(args.release_dir, statement, key)
    print(
        f"provenance: {args.release_dir / provenance.STATEMENT_FILE}"
        + (f", signed {args.release_dir / provenance.ENVELOPE_FILE}" if key else "")
    )
    return 0


def _register_provenance(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "provenance",
        help="SLSA v1 provenance (in-toto Statement, DSSE-signed) for the image and chart",
    )
    _add_release_inputs(parser, registry_required=True)
    parser.add_argument("--key", type=Path, help="sign the envelope (COSIGN_PASSWORD applies)")
    parser.add_argument(
        "--builder-id", default=os.environ.get("BUILDER_ID", provenance.DEFAULT_BUILDER_ID)
    )
    parser.add_argument("--started-on", help="RFC 3339 start of the build (default: now)")
    parser.add_argument("--release-dir", type=Path, default=Path("dist/release"))
    parser.add_argument("--source-dir", type=Path, default=Path("."))
    parser.set_defaults(handler=_cmd_provenance)


def _cmd_sign(args: argparse.Namespace) -> int:
    plan = ReleasePlan.load(args.image, args.chart, args.registry)
    todo = release.statements(args.release_dir, plan)
    if args.keyless:
        try:
            with sign.keyless_signer(args.sigstore_staging) as signer:
                attachments = sign.build_attachments(signer, plan.targets(), todo)
        except sign.KeylessError as exc:
            print(f"sign: {exc}", file=sys.stderr)
            return 2
    else:
        key = cosign_keys.load_signing_key(args.key)
        attachments = sign.build_attachments(key, plan.targets(), todo)
    write_attachments(args.release_dir / "attachments", attachments)
    for att in attachments:
        print(f"signed {att.role}: {att.tag} ({len(att.layers)} layer(s))")
    return 0


def _register_sign(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "sign",
        help="sign the image and chart and attest provenance/SBOM (cosign format)",
        description="Write cosign-format .sig and .att manifests for the image and chart into a "
        "staging OCI layout that `publish` pushes. Key: COSIGN_KEY (cosign encrypted or PEM), "
        "password COSIGN_PASSWORD.",
    )
    _add_release_inputs(parser, registry_required=True)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", type=Path, help="private key file (cosign format or PEM)")
    how.add_argument(
        "--keyless",
        action="store_true",
        help="sign through Sigstore (Fulcio + Rekor) with the CI's ambient OIDC identity",
    )
    parser.add_argument(
        "--sigstore-staging", action="store_true", help="use Sigstore's staging instance"
    )
    parser.add_argument(
        "--release-dir",
        type=Path,
        default=Path("dist/release"),
        help="where sbom/provenance were written and attachments go",
    )
    parser.set_defaults(handler=_cmd_sign)


# ---- publish and verify -------------------------------------------------------------------------


def _cmd_publish(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    plan = ReleasePlan.load(args.image, args.chart, args.registry)
    try:
        report = publish_plan(plan, args.release_dir, args.auth_file, args.plain_http, console)
    except RegistryError as exc:
        console.print(f"[red]publish failed:[/red] {exc}")
        return 2
    print(report.summary())
    for role in plan.roles():
        print(
            f"{role}: {plan.ref_for(role).with_tag(plan.tag_for(role) or None)}@"
            f"{plan.artifact_for(role).digest}"
        )
    return 0


def _register_publish(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "publish",
        help="push image, chart, signatures, attestations (by digest, idempotent)",
        description="Push the release to REGISTRY with credentials from a docker config JSON "
        "(AUTH_FILE). Tags move only after every blob and manifest is in place.",
    )
    _add_release_inputs(parser, registry_required=False)
    parser.add_argument(
        "--registry",
        default=os.environ.get("REGISTRY"),
        required=not os.environ.get("REGISTRY"),
        help="e.g. 127.0.0.1:5000/portcullis",
    )
    parser.add_argument("--release-dir", type=Path, default=Path("dist/release"))
    _add_registry_options(parser)
    parser.set_defaults(handler=_cmd_publish)


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        ref = Reference.parse(args.ref)
        key = cosign_keys.load_public_key(args.key)
        policy = Policy.from_file(args.policy) if args.policy else Policy()
    except (ValueError, OSError, cosign_keys.KeyFileError) as exc:
        print(f"verify: {exc}")
        return 2
    if args.builder_id:
        policy.builder_id = args.builder_id
    if args.source_repo:
        policy.source_repository = args.source_repo
    if args.require_vex:
        policy.require_vex = True
    try:
        with client_for(ref, args.auth_file, plain_http=args.plain_http) as client:
            result = verify_artifact(Verifier(client, key, policy), ref, args.file)
    except VerificationError as exc:
        print(f"FAILED {ref}: {exc}")
        return 1
    except RegistryError as exc:
        print(f"verify: registry error: {exc}")
        return 2
    print(f"OK {ref.name}@{result.digest}")
    print(f"  manifest and {result.blobs_checked} blobs match their digests")
    for note in result.notes:
        print(f"  {note}")
    for child in result.platforms:
        print(f"  {child.platform} {child.digest}")
        for note in child.notes:
            print(f"    {note}")
    return 0


def _register_verify(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "verify",
        help="verify a published image, chart or kubectl-portcullis binary: digests, signature, "
        "provenance, SBOM",
        description="Exit 0 only if REF's manifest and blobs match their digests, a cosign "
        "signature for exactly that digest verifies with --key, the SLSA provenance verifies and "
        "matches the policy, and an SBOM for that digest is attached. An image index is "
        "followed: the index signed and named by the provenance, then every platform image "
        "signed, a provenance subject and with its own SBOM. REF may pin a digest "
        "(repo:tag@sha256:...) to also detect a moved tag.",
    )
    parser.add_argument("ref", help="host[:port]/repository[:tag][@sha256:...]")
    parser.add_argument("--key", type=Path, required=True, help="cosign public key (PEM)")
    parser.add_argument("--policy", type=Path, help="VerificationPolicy YAML (provenance/)")
    parser.add_argument("--source-repo", help="required externalParameters.source.repository")
    parser.add_argument("--builder-id", help="required runDetails.builder.id")
    parser.add_argument(
        "--require-vex",
        action="store_true",
        help="also require an OpenVEX attestation whose statements name this digest",
    )
    parser.add_argument(
        "--file",
        type=Path,
        help="a downloaded kubectl-portcullis binary: must be the signed artifact's binary",
    )
    _add_registry_options(parser)
    parser.set_defaults(handler=_cmd_verify)


# ---- the kubectl-portcullis binary ---------------------------------------------------------------


def _cmd_plugin_attest(args: argparse.Namespace) -> int:
    try:
        build = PluginBuild.load(args.login_dir)
    except PluginError as exc:
        print(f"plugin attest: {exc}", file=sys.stderr)
        return 2
    ref = build.reference(args.registry)
    run = provenance.BuildRun(builder_id=args.builder_id)
    if args.keyless:
        try:
            with sign.keyless_signer(args.sigstore_staging) as signer:
                out = plugin_attest.prepare_plugin(
                    build, ref, args.release_dir, signer, args.source_dir.resolve(), run
                )
        except sign.KeylessError as exc:
            print(f"plugin attest: {exc}", file=sys.stderr)
            return 2
    else:
        key = cosign_keys.load_signing_key(args.key)
        out = plugin_attest.prepare_plugin(
            build, ref, args.release_dir, key, args.source_dir.resolve(), run
        )
    print(f"kubectl-portcullis {build.platform} sha256 {build.sha256}")
    pinned = f"{ref.with_tag(build.tag())}@{build.artifact().digest}"
    print(f"{pinned}: SBOM, provenance, signatures in {out}")
    return 0


def _cmd_plugin_publish(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        build = PluginBuild.load(args.login_dir)
        report = plugin_distribute.publish_plugin(
            build, args.registry, args.release_dir, args.auth_file, args.plain_http, console
        )
    except PluginError as exc:
        print(f"plugin publish: {exc}", file=sys.stderr)
        return 2
    except RegistryError as exc:
        console.print(f"[red]publish failed:[/red] {exc}")
        return 2
    print(report.summary())
    print(f"{build.reference(args.registry).with_tag(build.tag())}@{build.artifact().digest}")
    return 0


def _register_plugin(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "plugin",
        help="attest and publish the kubectl-portcullis binary (`make login-binary`'s output)",
        description="The login binary as an OCI artifact at REGISTRY/kubectl-portcullis, with "
        "its own SBOM, SLSA provenance and cosign signatures (`make release` does both steps).",
    )
    actions = parser.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    attest_p = actions.add_parser("attest", help="SBOM, provenance, signatures (staged)")
    publish_p = actions.add_parser("publish", help="push the artifact and its attachments")
    for action in (attest_p, publish_p):
        action.add_argument("--login-dir", type=Path, default=Path("dist/login"))
        action.add_argument(
            "--registry",
            default=os.environ.get("REGISTRY"),
            required=not os.environ.get("REGISTRY"),
            help="e.g. 127.0.0.1:5000/portcullis",
        )
        action.add_argument("--release-dir", type=Path, default=Path("dist/release"))
    how = attest_p.add_mutually_exclusive_group(required=True)
    how.add_argument("--key", type=Path, help="private key file (cosign format or PEM)")
    how.add_argument(
        "--keyless",
        action="store_true",
        help="sign through Sigstore (Fulcio + Rekor) with the CI's ambient OIDC identity",
    )
    attest_p.add_argument(
        "--sigstore-staging", action="store_true", help="use Sigstore's staging instance"
    )
    attest_p.add_argument(
        "--builder-id", default=os.environ.get("BUILDER_ID", provenance.DEFAULT_BUILDER_ID)
    )
    attest_p.add_argument("--source-dir", type=Path, default=Path("."))
    attest_p.set_defaults(handler=_cmd_plugin_attest)
    _add_registry_options(publish_p)
    publish_p.set_defaults(handler=_cmd_plugin_publish)


# ---- release ------------------------------------------------------------------------------------


def _cmd_release(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    options = release.ReleaseOptions(
        image=args.image,
        chart_dir=args.chart_dir,
        release_dir=args.release_dir,
        manifest=args.manifest,
        flux_dir=args.flux_dir,
        runtime_lock=args.runtime_lock,
        packages_lock=args.packages_lock,
        deb_dir=args.deb_dir,
        tree=args.tree,
        skip_chart_build=args.skip_chart_build,
        login_dir=None if args.without_login_binary else args.login_dir,
        login_cache=args.login_cache,
        skip_login_build=args.skip_login_build,
    )
    try:
        return release.run_release(options, console)
    except (
        RegistryError,
        VerificationError,
        LocalRegistryError,
        chart.ChartError,
        login_binary.LoginBinaryError,
        login_contents.ContentsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        console.print(f"[red]release failed:[/red] {exc}")
        return 1


def _register_release(sub: Subparsers) -> None:
    defaults = release.ReleaseOptions()
    parser = sub.add_parser(
        "release",
        help="the whole release: chart, SBOM, provenance, sign, publish, verify, manifest",
        description="Reads REGISTRY, AUTH_FILE, COSIGN_KEY and COSIGN_PASSWORD like cosign. "
        "Without REGISTRY it starts a local authenticated registry; without COSIGN_KEY it makes "
        "a throwaway key, and says so.",
    )
    parser.add_argument("--image", type=Path, default=defaults.image)
    parser.add_argument("--chart-dir", type=Path, default=defaults.chart_dir)
    parser.add_argument("--release-dir", type=Path, default=defaults.release_dir)
    parser.add_argument("--manifest", type=Path, default=defaults.manifest)
    parser.add_argument("--flux-dir", type=Path, default=defaults.flux_dir)
    parser.add_argument("--runtime-lock", type=Path, default=defaults.runtime_lock)
    parser.add_argument("--packages-lock", type=Path, default=defaults.packages_lock)
    parser.add_argument("--deb-dir", type=Path, default=defaults.deb_dir)
    parser.add_argument(
        "--tree",
        type=Path,
        default=defaults.tree,
        help="repository whose generated copies (Chart.yaml, docs) a real release rewrites",
    )
    parser.add_argument(
        "--skip-chart-build",
        action="store_true",
        help="use the newest chart in --chart-dir as it is",
    )
    parser.add_argument(
        "--login-dir",
        type=Path,
        default=Path("dist/login"),
        help="where the kubectl-portcullis binary is built (as `make login-binary` does) and "
        "released from",
    )
    parser.add_argument("--login-cache", type=Path, default=Path(".cache/login"))
    parser.add_argument(
        "--skip-login-build",
        action="store_true",
        help="release the binary already in --login-dir as it is",
    )
    parser.add_argument(
        "--without-login-binary",
        action="store_true",
        help="release the image and chart only",
    )
    parser.set_defaults(handler=_cmd_release)


# ---- track-upstream -----------------------------------------------------------------------------


def _cmd_track_upstream(args: argparse.Namespace) -> int:
    import httpx  # only this command talks to the upstream feeds

    console = Console(stderr=False, width=160)
    repo = args.repo.resolve()
    sources = upstream_feeds.Sources(
        pypi=args.pypi_url,
        osv=args.osv_url,
        debian=args.debian_url,
        debian_security=args.debian_security_url,
        security_tracker=args.security_tracker_url,
        dex_releases=args.dex_releases_url,
    )
    seen_path = repo / args.seen
    try:
        policy = upstream_track.Policy.load(repo / args.policy)
        seen = json.loads(seen_path.read_text()) if seen_path.is_file() else {}
        pins = [
            (d.name, d.version)
            for d in sbom.parse_requirements_lock((repo / args.runtime_lock).read_text())
        ]
        lock = load_lock(repo / args.packages_lock)
        today = dt.date.fromisoformat(args.today) if args.today else dt.date.today()
        with httpx.Client(timeout=60, follow_redirects=True) as client:
            feeds = upstream_feeds.Feeds(sources, client)
            plan = upstream_track.track(
                feeds=feeds,
                policy=policy,
                python_pins=pins,
                lock=lock,
                today=today,
                seen=seen,
                vex=upstream_track.load_vex(repo / args.vex),
            )
            out = repo / args.output
            out.mkdir(parents=True, exist_ok=True)
            (out / "plan.json").write_text(plan.to_json())
            recorder = Console(record=True, width=160, file=io.StringIO())
            plan.table(recorder)
            (out / "plan.txt").write_text(recorder.export_text())
            seen_path.parent.mkdir(parents=True, exist_ok=True)
            seen_path.write_text(json.dumps(seen, indent=2, sort_keys=True) + "\n")
            plan.table(console)
            console.print(f"wrote {out / 'plan.json'} and {out / 'plan.txt'}")
            if args.apply and plan.changes:
                version = upstream_apply.apply_plan(repo, plan, feeds, pip_compile=args.pip_compile)
                console.print(f"applied the plan: version {version}, CHANGELOG.md entry added")
    except (
        upstream_feeds.FeedError,
        upstream_apply.ApplyError,
        ManifestError,
        ValueError,
        OSError,
    ) as exc:
        print(f"portcullis-release track-upstream: {exc} (nothing applied)", file=sys.stderr)
        return 2
    return 0


def _register_track_upstream(sub: Subparsers) -> None:
    defaults = upstream_feeds.Sources()
    parser = sub.add_parser(
        "track-upstream",
        help="bump plan from PyPI, OSV, the Debian archive and security tracker, and Dex",
        description="Writes dist/upstream/plan.json and plan.txt: what changed upstream for "
        "every pinned input, why, CVE ids with severity and their SLA deadline "
        "(release/policy.yaml). --apply updates the locks, bumps the version, regenerates "
        "the generated files and adds a CHANGELOG entry.",
    )
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--policy", type=Path, default=Path("release/policy.yaml"))
    parser.add_argument("--vex", type=Path, default=Path("release/vex.json"))
    parser.add_argument(
        "--seen",
        type=Path,
        default=Path("release/upstream-seen.json"),
        help="ledger of the day each vulnerability was first seen (starts its SLA clock)",
    )
    parser.add_argument("--runtime-lock", type=Path, default=Path("requirements/runtime.txt"))
    parser.add_argument(
        "--packages-lock", type=Path, default=Path("images/portcullis/packages.lock")
    )
    parser.add_argument("--output", type=Path, default=Path("dist/upstream"))
    parser.add_argument("--today", help="evaluate deadlines as of this date (YYYY-MM-DD)")
    parser.add_argument("--apply", action="store_true", help="apply the plan to the tree")
    parser.add_argument(
        "--pip-compile",
        default=os.environ.get("PIP_COMPILE", ".cache/lockenv/bin/pip-compile"),
        help="pip-compile for --apply (default $PIP_COMPILE or make lock's)",
    )
    for name, default in (
        ("pypi-url", defaults.pypi),
        ("osv-url", defaults.osv),
        ("debian-url", defaults.debian),
        ("debian-security-url", defaults.debian_security),
        ("security-tracker-url", defaults.security_tracker),
        ("dex-releases-url", defaults.dex_releases),
    ):
        parser.add_argument(f"--{name}", default=default)
    parser.set_defaults(handler=_cmd_track_upstream)


# ---- the parser ---------------------------------------------------------------------------------

# In the order `--help` lists them: the pipeline's order, then the whole release.
SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _register_image,
    _register_manifest,
    _register_chart,
    _register_flux,
    _register_generate,
    _register_sbom,
    _register_provenance,
    _register_sign,
    _register_publish,
    _register_verify,
    _register_plugin,
    _register_release,
    _register_track_upstream,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portcullis-release",
        description="Build, sign, publish and verify Portcullis release artefacts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

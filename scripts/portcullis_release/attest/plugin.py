"""SBOM, provenance and signatures for the ``kubectl-portcullis`` binary, like the image's.

* The SBOM (CycloneDX 1.6) is written from what the binary holds, read back from the file at
  build time (``build.login_contents``): the plugin package (standard library only), CPython
  (interpreter library, extension modules, the standard-library modules in the ``PYZ``),
  PyInstaller (its bootloader as shipped, its runtime modules) and each Debian package a bundled
  shared library comes from, each with its version; every archive entry is a nested file
  component with the sha256 of its bytes, and every entry and module is an evidence occurrence
  (``archive:<entry>``, ``pyz:<module>``, ``bootloader``), so "where does this part of the file
  come from" always has one answer. ``metadata.component`` is the artifact (its OCI purl names
  the manifest digest, as the image's does) with the binary's sha256 as its hash.
* The provenance (SLSA v1 in-toto statement) has three subjects: the executable, the krew archive
  and the OCI artifact, so ``cosign verify-blob-attestation`` on a downloaded file and
  ``cosign verify-attestation`` on the registry artifact both find their digest.
* Attachments are cosign's ``.sig``/``.att`` manifests for the artifact digest (the same code as
  the image's, role ``plugin``), plus two files for the downloaded binary: ``<file>.sig`` (what
  ``cosign sign-blob --key`` writes: base64 ECDSA over the file) and ``<file>.intoto.json`` (the
  DSSE-signed provenance, what ``cosign verify-blob-attestation --signature`` reads).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.component_evidence import ComponentEvidence, Occurrence
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from portcullis_release import oci
from portcullis_release.attest import dsse, provenance, sbom, sign
from portcullis_release.attest.attachments import write_attachments
from portcullis_release.attest.provenance import BuildRun, SourceInfo
from portcullis_release.build import login_binary
from portcullis_release.build.plugin_artifact import PluginBuild
from portcullis_release.oci import Reference

__all__ = [
    "ATTACHMENTS_DIR",
    "DIGEST_FILE",
    "PLUGIN_DIR",
    "ROLE",
    "plugin_bom",
    "plugin_statement",
    "prepare_plugin",
]

ROLE = "plugin"
PLUGIN_DIR = "plugin"  # under the release directory: SBOM, provenance, blob signatures
ATTACHMENTS_DIR = "attachments"  # under PLUGIN_DIR: the staged .sig/.att manifests
SBOM_FILE = "plugin.cdx.json"
STATEMENT_FILE = "provenance.json"
DIGEST_FILE = "artifact-digest"  # the artifact's manifest digest, for scripts (CI's cosign step)


def _sha256(value: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=value)


def _file(name: str, sha256: str, size: int | None, ref: str) -> Component:
    return Component(
        name=name,
        type=ComponentType.FILE,
        bom_ref=ref,
        hashes=[_sha256(sha256)],
        properties=[] if size is None else [Property(name="portcullis:size", value=str(size))],
    )


def _evidence(component: Component, locations: list[str]) -> None:
    if locations:
        component.evidence = ComponentEvidence(
            occurrences=[Occurrence(location=loc) for loc in sorted(locations)]
        )


def _lock_hashes(repo: Path) -> dict[str, list[str]]:
    """sha256s of each locked distribution of the freeze venv (requirements/release.txt)."""
    text = login_binary.lock_subset(
        (repo / "requirements" / "release.txt").read_text(), login_binary.FREEZE_DISTRIBUTIONS
    )
    return {d.name: d.hashes for d in sbom.parse_requirements_lock(text)}


def plugin_bom(build: PluginBuild, ref: Reference, digest: str, repo: Path) -> dict[str, Any]:
    """The binary's SBOM as JSON (validated against CycloneDX 1.6); see the module docstring."""
    contents = build.contents
    entries: list[dict[str, Any]] = contents["entries"]
    modules: list[dict[str, Any]] = contents["modules"]

    def located(origin: str) -> list[str]:
        return [f"archive:{e['name']}" for e in entries if e["origin"] == origin] + [
            f"pyz:{m['name']}" for m in modules if m["origin"] == origin
        ]

    def files(origin: str, prefix: str) -> list[Component]:
        return [
            _file(e["name"], e["sha256"], e["size"], f"{prefix}:archive:{e['name']}")
            for e in entries
            if e["origin"] == origin
        ]

    plugin_meta = contents["plugin"]
    app = Component(
        name=str(plugin_meta["package"]),
        version=build.version,
        type=ComponentType.APPLICATION,
        bom_ref="plugin:package",
        purl=PackageURL(type="generic", name="kubectl-portcullis", version=build.version),
        description="The kubectl-portcullis exec credential plugin (standard library only)",
        components=[
            *files("plugin", "plugin"),
            *(
                _file(f"{plugin_meta['package']}/{name}", sha, None, f"plugin:source:{name}")
                for name, sha in sorted(plugin_meta["files"].items())
            ),
        ],
    )
    _evidence(app, located("plugin"))

    python = contents["python"]
    cpython = Component(
        name=str(python["implementation"]),
        version=str(python["version"]),
        type=ComponentType.FRAMEWORK,
        bom_ref="python:interpreter",
        purl=PackageURL(
            type="generic", name=str(python["implementation"]), version=python["version"]
        ),
        description="The Python interpreter and the standard-library modules frozen in",
        components=files("cpython", "python"),
    )
    _evidence(cpython, located("cpython"))

    pyi = contents["pyinstaller"]
    boot = pyi["bootloader"]
    bootloader = _file("bootloader", boot["sha256"], boot["size"], "pyinstaller:bootloader")
    bootloader.properties.add(
        Property(name="portcullis:unstripped-sha256", value=str(boot["sourceSha256"]))
    )
    lock = _lock_hashes(repo)
    pyinstaller = Component(
        name="pyinstaller",
        version=str(pyi["version"]),
        type=ComponentType.LIBRARY,
        bom_ref="pypi:pyinstaller",
        purl=PackageURL(type="pypi", name="pyinstaller", version=str(pyi["version"])),
        description="PyInstaller's onefile bootloader and runtime modules",
        external_references=[
            ExternalReference(
                type=ExternalReferenceType.DISTRIBUTION,
                url=XsUri(f"https://pypi.org/project/pyinstaller/{pyi['version']}/"),
                hashes=[_sha256(h) for h in lock.get("pyinstaller", [])],
            )
        ],
        components=[bootloader, *files("pyinstaller", "pyinstaller")],
    )
    _evidence(pyinstaller, ["bootloader", *located("pyinstaller")])

    components = [app, cpython, pyinstaller]
    for deb in contents["debs"]:
        comp = Component(
            name=str(deb["name"]),
            version=str(deb["version"]),
            type=ComponentType.LIBRARY,
            bom_ref=f"deb:{deb['name']}",
            purl=PackageURL(
                type="deb",
                namespace="debian",
                name=str(deb["name"]),
                version=str(deb["version"]),
                qualifiers={"arch": str(deb["architecture"])},
            ),
            properties=[
                Property(name="portcullis:source-package", value=str(deb["source"])),
                Property(name="portcullis:source-version", value=str(deb["sourceVersion"])),
            ],
            components=files(f"deb:{deb['name']}", f"deb:{deb['name']}"),
        )
        _evidence(comp, located(f"deb:{deb['name']}"))
        components.append(comp)

    subject = Component(
        name="kubectl-portcullis",
        version=digest,
        type=ComponentType.APPLICATION,
        bom_ref="plugin",
        hashes=[_sha256(build.sha256)],
        purl=PackageURL(
            type="oci",
            name="kubectl-portcullis",
            version=digest,
            qualifiers={"repository_url": ref.name, "tag": build.tag()},
        ),
        properties=[
            Property(name="portcullis:file", value=build.binary.name),
            Property(name="portcullis:platform", value=build.platform),
        ],
    )
    epoch = int(contents.get("sourceDateEpoch") or 0)
    bom = Bom(
        components=components,
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"portcullis-plugin-sbom:{digest}"),
        metadata=BomMetaData(component=subject, timestamp=dt.datetime.fromtimestamp(epoch, dt.UTC)),
    )
    bom.register_dependency(subject, components)
    text = JsonV1Dot6(bom).output_as_string(indent=None)
    sbom.validate(text)
    doc: dict[str, Any] = json.loads(text)
    return doc


def _subjects(build: PluginBuild, ref: Reference, digest: str) -> list[dict[str, Any]]:
    return [
        {"name": build.binary.name, "digest": {"sha256": build.sha256}},
        {"name": build.archive.name, "digest": {"sha256": build.archive_sha256}},
        {"name": ref.name, "digest": {"sha256": oci.digest_hex(digest)}},
    ]


def plugin_statement(
    build: PluginBuild,
    ref: Reference,
    digest: str,
    repo: Path,
    run: BuildRun,
    source: SourceInfo,
) -> dict[str, Any]:
    """SLSA v1 provenance of the binary: from this commit, frozen with the locked PyInstaller."""
    deps: list[dict[str, Any]] = []
    git_dep: dict[str, Any] = {"name": "source", "annotations": {"ref": source.ref}}
    if source.repository is not None:
        git_dep = {"uri": f"git+{source.repository}@{source.ref}"}
    if source.commit:
        git_dep["digest"] = {"gitCommit": source.commit}
    deps.append(git_dep)
    lock_file = repo / "requirements" / "release.txt"
    deps.append(
        {
            "name": "requirements/release.txt",
            "uri": "file:requirements/release.txt",
            "digest": {"sha256": hashlib.sha256(lock_file.read_bytes()).hexdigest()},
        }
    )
    for name, sha256s in sorted(_lock_hashes(repo).items()):
        version = next(
            d.version for d in sbom.parse_requirements_lock(lock_file.read_text()) if d.name == name
        )
        deps.append(
            {
                "uri": f"pkg:pypi/{name}@{version}",
                "digest": {"sha256": sha256s[0]} if sha256s else {},
                "annotations": {"role": "freeze venv (PyInstaller)"},
            }
        )
    for deb in build.contents["debs"]:
        deps.append(
            {
                "uri": f"pkg:deb/debian/{deb['name']}@{deb['version']}?arch={deb['architecture']}",
                "annotations": {"role": "shared library bundled by PyInstaller"},
            }
        )
    python = build.contents["python"]
    deps.append(
        {
            "uri": f"pkg:generic/{python['implementation']}@{python['version']}",
            "annotations": {"role": "the interpreter frozen into the binary"},
        }
    )
    finished = run.finished_on or dt.datetime.now(dt.UTC)
    return {
        "_type": provenance.STATEMENT_TYPE,
        "subject": _subjects(build, ref, digest),
        "predicateType": provenance.PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": provenance.BUILD_TYPE,
                "externalParameters": {
                    "source": {"repository": source.repository, "ref": source.ref},
                    # The REGISTRY prefix, as the image's provenance names it.
                    "registry": ref.name.rsplit("/", 1)[0],
                    "targets": ["login-binary"],
                },
                "internalParameters": {
                    "sourceDateEpoch": str(build.contents.get("sourceDateEpoch")),
                    "treeDirty": source.dirty,
                    "python": str(python["version"]),
                    "pyinstaller": str(build.contents["pyinstaller"]["version"]),
                    "platform": build.platform,
                    "pluginVersion": build.version,
                    "builderPython": platform.python_version(),
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": run.builder_id},
                "metadata": {
                    "invocationId": run.invocation_id,
                    "startedOn": run.started_on.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "finishedOn": finished.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            },
        },
    }


def _statement_bytes(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()


def prepare_plugin(
    build: PluginBuild,
    ref: Reference,
    release_dir: Path,
    signer: sign.Signer | ec.EllipticCurvePrivateKey,
    repo: Path,
    run: BuildRun,
    source: SourceInfo | None = None,
) -> Path:
    """SBOM, provenance, the artifact's staged attachments and (signing with a key) the blob
    signature files, under ``<release_dir>/plugin``; that directory.

    Signed keylessly (``sign.SigstoreSigner``, in CI) the artifact's attachments carry the
    Fulcio certificate and Rekor entry as the image's do; the ``.sig``/``.intoto.json`` files
    are written only with a key, whose public half verifies them.
    """
    out = release_dir / PLUGIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    digest = build.artifact().digest
    source = source or SourceInfo.detect(repo)
    bom = plugin_bom(build, ref, digest, repo)
    (out / SBOM_FILE).write_text(json.dumps(bom, indent=1, sort_keys=True) + "\n")
    statement = plugin_statement(build, ref, digest, repo, run, source)
    (out / STATEMENT_FILE).write_bytes(_statement_bytes(statement))
    sbom_statement = {
        "_type": provenance.STATEMENT_TYPE,
        "subject": _subjects(build, ref, digest),
        "predicateType": sbom.CYCLONEDX_PREDICATE,
        "predicate": bom,
    }
    attachments = sign.build_attachments(
        signer, {ROLE: (ref.name, digest)}, {ROLE: [statement, sbom_statement]}
    )
    write_attachments(out / ATTACHMENTS_DIR, attachments)
    (out / DIGEST_FILE).write_text(digest + "\n")
    for name in (build.binary.name, build.archive.name):
        source_path = build.binary.with_name(name)
        (out / name).write_bytes(source_path.read_bytes())
        os.chmod(out / name, source_path.stat().st_mode & 0o777)
    key = signer.key if isinstance(signer, sign.KeySigner) else signer
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return out
    # For the file a user downloads: what `cosign sign-blob --key` and `cosign attest-blob`
    # would write, checked by `cosign verify-blob` / `verify-blob-attestation`.
    signature = key.sign(
        build.binary.read_bytes(), ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    )
    (out / f"{build.binary.name}.sig").write_text(base64.b64encode(signature).decode())
    (out / f"{build.binary.name}.intoto.json").write_bytes(
        dsse.sign_envelope(key, _statement_bytes(statement))
    )
    return out

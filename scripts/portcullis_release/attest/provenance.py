"""SLSA Provenance v1 for a release, as an in-toto Statement v1 in a signed DSSE envelope.

The statement answers "built from what, by whom, how": the source commit and every lock file
that pins an input (Python, Debian, the OpenSSL FIPS provider) are resolved dependencies with
digests; subjects are the image manifest digest and the chart manifest digest. The build type is
ours and documented in ``provenance/buildtype.md`` so a verifier knows what the parameters mean.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from portcullis_release import manifest, oci
from portcullis_release.attest import dsse
from portcullis_release.build.packages_lock import load_lock
from portcullis_release.plan import ReleasePlan

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Names (URNs) for the build type and the local builder, both documented in
# provenance/buildtype.md. They are identifiers, not links: a URL would have to point at a
# repository this tree cannot know (the source repository is detected, never assumed).
BUILD_TYPE = "urn:portcullis:buildtype:make-release:v1"
DEFAULT_BUILDER_ID = "urn:portcullis:builder:local-make"
STATEMENT_FILE = "provenance.json"
ENVELOPE_FILE = "provenance.dsse.json"
LOCK_FILES = (
    "requirements/build.txt",
    "requirements/runtime.txt",
    "requirements/release.txt",
    "images/portcullis/packages.lock",
)


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SourceInfo:
    """Where the release was built from (externalParameters and the git dependency)."""

    repository: str | None  # None: no SOURCE_REPOSITORY, manifest source, or git remote
    ref: str
    commit: str | None
    dirty: bool

    @classmethod
    def detect(cls, repo: Path) -> SourceInfo:
        """Environment first (CI knows best: SOURCE_REPOSITORY, SOURCE_REF), then the manifest
        and git (:func:`manifest.source_repository`); an unknown repository stays None."""
        repository = manifest.source_repository(repo)
        ref = os.environ.get("SOURCE_REF") or _git(repo, "symbolic-ref", "-q", "HEAD") or "HEAD"
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
        return cls(repository, ref, commit, dirty)


@dataclass
class BuildRun:
    builder_id: str = DEFAULT_BUILDER_ID
    invocation_id: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    started_on: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    finished_on: dt.datetime | None = None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolved_dependencies(repo: Path, source: SourceInfo) -> list[dict[str, Any]]:
    """Source commit, each lock file by sha256, every pinned .deb, and the OpenSSL source."""
    deps: list[dict[str, Any]] = []
    git_dep: dict[str, Any] = {"name": "source", "annotations": {"ref": source.ref}}
    if source.repository is not None:
        git_dep = {"uri": f"git+{source.repository}@{source.ref}"}
    if source.commit:
        git_dep["digest"] = {"gitCommit": source.commit}
    deps.append(git_dep)
    for rel in LOCK_FILES:
        path = repo / rel
        if path.is_file():
            deps.append(
                {"name": rel, "uri": f"file:{rel}", "digest": {"sha256": _file_digest(path)}}
            )
    lock_path = repo / "images/portcullis/packages.lock"
    if lock_path.is_file():
        lock = load_lock(lock_path)
        for deb in sorted(lock.debs, key=lambda d: d.name):
            deps.append(
                {
                    "uri": f"pkg:deb/debian/{deb.name}@{deb.version}?arch={deb.architecture}"
                    f"&distro=debian-{lock.suite}",
                    "digest": {"sha256": deb.sha256},
                }
            )
        fips = lock.fips_provider
        deps.append(
            {
                "name": "openssl-fips-provider-source",
                "uri": f"pkg:deb/debian/{fips.source_package}@{fips.source_version}?arch=source"
                f"&distro=debian-{lock.suite}",
                "annotations": {"builtFile": "fips.so", "builtFileSha256": fips.fips_so_sha256},
            }
        )
    return deps


def build_statement(
    plan: ReleasePlan, repo: Path, run: BuildRun, source: SourceInfo | None = None
) -> dict[str, Any]:
    source = source or SourceInfo.detect(repo)
    subjects = [
        {
            "name": plan.ref_for(role).name,
            "digest": {"sha256": oci.digest_hex(plan.artifact_for(role).digest)},
        }
        for role in plan.roles()
    ]
    finished = run.finished_on or dt.datetime.now(dt.UTC)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"repository": source.repository, "ref": source.ref},
                    "registry": plan.registry,
                    "targets": ["image", "chart", "release"],
                },
                "internalParameters": {
                    "sourceDateEpoch": os.environ.get("SOURCE_DATE_EPOCH"),
                    "treeDirty": source.dirty,
                    "python": platform.python_version(),
                    "imageTag": plan.image_tag,
                    "chartVersion": plan.chart_version or None,
                },
                "resolvedDependencies": resolved_dependencies(repo, source),
            },
            "runDetails": {
                "builder": {"id": run.builder_id},
                "metadata": {
                    "invocationId": run.invocation_id,
                    "startedOn": _utc(run.started_on),
                    "finishedOn": _utc(finished),
                },
            },
        },
    }


def write(
    release_dir: Path, statement: dict[str, Any], key: ec.EllipticCurvePrivateKey | None
) -> None:
    """Write the statement and, with a key, its signed DSSE envelope."""
    release_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()
    (release_dir / STATEMENT_FILE).write_bytes(payload)
    if key is not None:
        (release_dir / ENVELOPE_FILE).write_bytes(dsse.sign_envelope(key, payload))

"""The forge's CI (.github/workflows/), which cannot run here, checked for what can go wrong
silently: valid YAML, every action pinned by a full commit SHA, least-privilege permissions per
job (nothing at the top level; id-token only where keyless signing happens; write access only
where something is pushed), tests as root in debian:12 running `make test`."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from portcullis_release import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
_USES = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
# The only scopes each workflow's jobs may hold (anything absent must stay "none").
ALLOWED = {
    "test.yml": {"test": {"contents": "read"}},
    "release.yml": {"release": {"contents": "read", "packages": "write", "id-token": "write"}},
    "track-upstream.yml": {"bump-plan": {"contents": "write", "pull-requests": "write"}},
}


def _load(name: str) -> dict[Any, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict), name
    return doc


def test_the_expected_workflows_exist() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == sorted(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_actions_are_pinned_by_full_commit_sha(name: str) -> None:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    uses = [
        step["uses"]
        for job in _load(name)["jobs"].values()
        for step in job.get("steps", [])
        if "uses" in step
    ]
    assert uses, name
    for ref in uses:
        assert _USES.match(ref), f"{name}: {ref} is not pinned by a 40-hex commit SHA"
        # The version the SHA stands for is written beside it, for the person updating it.
        assert re.search(re.escape(ref) + r" # v\d+\.\d+\.\d+$", text, re.M), ref


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_permissions_are_least_privilege_per_job(name: str) -> None:
    doc = _load(name)
    assert doc["permissions"] == {}, f"{name}: top-level permissions must be empty"
    assert set(doc["jobs"]) == set(ALLOWED[name])
    for job_id, job in doc["jobs"].items():
        assert job.get("permissions") == ALLOWED[name][job_id], f"{name}: {job_id}"
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, f"{name}: checkout"


def test_tests_run_as_root_in_debian_12_with_make_test() -> None:
    job = _load("test.yml")["jobs"]["test"]
    assert job["container"]["image"] == "debian:12"
    assert "--user" not in job["container"].get("options", "")
    assert any(step.get("run", "").strip() == "make test" for step in job["steps"])
    triggers = _load("test.yml")[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request"}


def test_release_is_on_tags_keyless_and_verified_with_cosign() -> None:
    doc = _load("release.yml")
    assert doc[True] == {"push": {"tags": ["v*.*.*"]}}
    runs = "\n".join(step.get("run", "") for step in doc["jobs"]["release"]["steps"])
    assert "--keyless" in runs
    assert "provenance" in runs
    assert "cosign verify " in runs
    assert "--certificate-oidc-issuer https://token.actions.githubusercontent.com" in runs
    for kind in ("slsaprovenance1", "cyclonedx", "openvex"):
        assert kind in runs
    assert "COSIGN_KEY" not in runs


def test_release_attests_publishes_and_verifies_the_login_binary() -> None:
    runs = "\n".join(
        step.get("run", "") for step in _load("release.yml")["jobs"]["release"]["steps"]
    )
    assert "login-binary" in runs
    assert "portcullis-release plugin attest --login-dir dist/login" in runs
    assert "portcullis-release plugin publish --login-dir dist/login" in runs
    assert 'cosign verify "$REGISTRY/kubectl-portcullis@$plugin"' in runs
    assert 'verify-attestation --type "$type" "$REGISTRY/kubectl-portcullis@$plugin"' in runs


def test_track_upstream_is_scheduled_and_opens_a_pull_request() -> None:
    doc = _load("track-upstream.yml")
    assert doc[True]["schedule"][0]["cron"]
    runs = "\n".join(step.get("run", "") for step in doc["jobs"]["bump-plan"]["steps"])
    assert "track-upstream --apply" in runs
    assert "/pulls" in runs
    assert "dist/upstream/plan.txt" in runs

"""VEX: which vulnerabilities do not affect the image, and why (OpenVEX, ``release/vex.json``).

A scanner that finds a CVE in an SBOM component cannot know that the vulnerable code is never
run; the VEX document says so, per CVE, with one of OpenVEX's justifications, and is attached to
the image like the SBOM (an in-toto statement signed as a cosign attestation with the predicate
type ``cosign attest --type openvex`` uses), so ``verify`` can check it names this digest and
``track-upstream`` can leave cleared CVEs out of its deadlines.

The in-tree document names its products generically; :func:`for_image` binds every statement to
the image digest being released (a VEX statement about "some portcullis image" proves nothing).
Each statement names, as a subcomponent, the package build it is about (a purl as the SBOM
lists it, e.g. ``pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?...``): the tests fail when a pin moves
and a statement no longer matches what the image ships, and ``track-upstream`` applies a
statement only to that build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from portcullis_release import oci

__all__ = [
    "OPENVEX_PREDICATE",
    "VEX_FILE",
    "VexError",
    "for_image",
    "load",
    "statement",
    "subcomponents",
]

OPENVEX_PREDICATE = "https://openvex.dev/ns"
OPENVEX_CONTEXT = "https://openvex.dev/ns/v0.2.0"
VEX_FILE = "image.vex.json"
STATUSES = {"not_affected", "affected", "fixed", "under_investigation"}
JUSTIFICATIONS = {
    "component_not_present",
    "vulnerable_code_not_present",
    "vulnerable_code_not_in_execute_path",
    "vulnerable_code_cannot_be_controlled_by_adversary",
    "inline_mitigations_already_exist",
}


class VexError(ValueError):
    """The VEX document is invalid; the message names the statement and field."""


def load(path: Path) -> dict[str, Any]:
    """Read and check an OpenVEX document (the rules of the OpenVEX spec v0.2.0 we rely on)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VexError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("@context") != OPENVEX_CONTEXT:
        raise VexError(f"{path}: @context must be {OPENVEX_CONTEXT}")
    for key in ("@id", "author", "timestamp", "version"):
        if key not in doc:
            raise VexError(f"{path}: {key} is required")
    statements = doc.get("statements")
    if not isinstance(statements, list):
        raise VexError(f"{path}: statements must be a list")
    for i, item in enumerate(statements):
        where = f"{path}: statements[{i}]"
        name = (item.get("vulnerability") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise VexError(f"{where}.vulnerability.name is required")
        status = item.get("status")
        if status not in STATUSES:
            raise VexError(f"{where}.status must be one of {sorted(STATUSES)}")
        products = item.get("products")
        if not isinstance(products, list) or not products:
            raise VexError(f"{where}.products: at least one product is required")
        for j, product in enumerate(products):
            if not isinstance(product, dict) or not isinstance(product.get("@id"), str):
                raise VexError(f"{where}.products[{j}].@id is required")
            subs = product.get("subcomponents", [])
            if not isinstance(subs, list) or not all(
                isinstance(sub, dict) and isinstance(sub.get("@id"), str) for sub in subs
            ):
                raise VexError(f"{where}.products[{j}].subcomponents: each needs an @id")
        if status == "not_affected":
            # OpenVEX accepts either; this project asks for both: the category a scanner
            # can act on, and the reason a reader can check against the image.
            if item.get("justification") not in JUSTIFICATIONS:
                raise VexError(
                    f"{where}: not_affected needs a justification ({sorted(JUSTIFICATIONS)})"
                )
            if not item.get("impact_statement"):
                raise VexError(f"{where}: not_affected needs an impact_statement saying why")
    return doc


def subcomponents(statement: dict[str, Any]) -> list[str]:
    """The ``@id`` (a purl) of every subcomponent a statement names, in order."""
    return [
        str(sub["@id"])
        for product in statement.get("products") or []
        for sub in product.get("subcomponents") or []
    ]


def for_image(doc: dict[str, Any], repository: str, digest: str) -> dict[str, Any]:
    """A copy whose every statement's product is exactly this image digest, keeping the
    subcomponents (the package inside the image the statement is about)."""
    purl = f"pkg:oci/{repository.rsplit('/', 1)[-1]}@{digest}?repository_url={repository}"
    bound = dict(doc)
    statements = []
    for statement in doc["statements"]:
        product: dict[str, Any] = {"@id": purl, "identifiers": {"purl": purl}}
        subs = subcomponents(statement)
        if subs:
            product["subcomponents"] = [{"@id": sub} for sub in subs]
        statements.append({**statement, "products": [product]})
    bound["statements"] = statements
    return bound


def statement(doc: dict[str, Any], name: str, digest: str) -> dict[str, Any]:
    """The in-toto statement carrying the VEX document, as `cosign attest --type openvex`."""
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": oci.digest_hex(digest)}}],
        "predicateType": OPENVEX_PREDICATE,
        "predicate": doc,
    }

"""The modules the freeze leaves out (``excludes += [...]`` in images/portcullis/portcullis.spec)
are modules no server module imports.

The frozen server cannot import an excluded module, so a server module that starts importing one
(at its top, or on the way in through a library) would fail only in the image. This imports
every module of the server in a fresh interpreter, as the image's hidden imports do, and checks
that none of the excluded names was loaded; a library's lazy import inside a function is what
the image tests that run the server exercise.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.support.image import REPO

SPEC = REPO / "images" / "portcullis" / "portcullis.spec"

_IMPORT_EVERYTHING = """
import json, pkgutil, sys, importlib
import portcullis
names = [m.name for m in pkgutil.walk_packages(portcullis.__path__, "portcullis.")]
for name in names:
    importlib.import_module(name)
json.dump({"imported": names, "modules": sorted(sys.modules)}, sys.stdout)
"""


def excluded_modules() -> list[str]:
    """The names of the spec's ``excludes += [...]`` list (the size-driven exclusions)."""
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "excludes"
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list)
            return [str(name) for name in value]
    raise AssertionError(f"{SPEC}: no `excludes += [...]` list")


def test_no_server_module_imports_an_excluded_module() -> None:
    excluded = excluded_modules()
    assert "sqlalchemy.orm" in excluded  # the list parsed is the one meant
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERYTHING],
        env={"PYTHONPATH": str(REPO / "server"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    loaded = set(result["modules"])
    # Not vacuous: every server module was imported, with the libraries the excluded ones
    # belong to.
    assert "portcullis.connectors.saml" in result["imported"]
    assert "portcullis.storage.postgres" in result["imported"]
    assert {"sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite", "lxml.etree"} <= loaded
    hits = sorted(
        module
        for module in loaded
        if any(module == name or module.startswith(name + ".") for name in excluded)
    )
    assert hits == []

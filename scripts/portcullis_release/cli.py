"""`portcullis-release` entry point.

Each release step lives in its own module exposing ``register(subparsers)``; this file only wires
them together, so steps can evolve independently.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in the order `--help` lists them.
STEP_MODULES: tuple[str, ...] = (
    "image",
    "manifest",
    "chart",
    "flux",
    "sbom",
    "provenance",
    "sign",
    "publish",
    "verify",
    "release",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portcullis-release",
        description="Build, sign, publish and verify Portcullis release artefacts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STEP_MODULES:
        module = importlib.import_module(f"portcullis_release.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

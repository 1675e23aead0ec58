"""``python -m kubectl_portcullis`` runs the plugin (the frozen binary's entry point too)."""

from __future__ import annotations

from kubectl_portcullis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Compatibility names for ``portcullis.admin``: refresh-token families now live in
``portcullis.oidc.refresh``.

Only the admin API imports this module (its imports are being reworked on another branch); it
re-exports the two names it uses so both branches merge cleanly. Delete it once admin imports
``end_family`` and ``session_id`` from ``portcullis.oidc.refresh``.
"""

from __future__ import annotations

from portcullis.oidc.refresh import SID_PREFIX, end_family, session_id

__all__ = ["SID_PREFIX", "end_family", "session_id"]

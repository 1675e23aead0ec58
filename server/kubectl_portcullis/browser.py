"""Opening the user's browser without disturbing kubectl.

kubectl reads the plugin's stdout as the ExecCredential, and browsers started through
:mod:`webbrowser` inherit stdout: one chatty browser ("Opening in existing browser session.")
corrupts the credential. So stdout is pointed at /dev/null while the browser is started.
On Linux without a graphical session, :mod:`webbrowser` would fall back to a console browser
(lynx, w3m) that fights kubectl for the terminal; there the URL is only printed.
"""

from __future__ import annotations

import os
import sys
import webbrowser


def graphical_session() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"))


def open_browser(url: str) -> bool:
    """Try to open ``url``; True when a browser accepted it."""
    if not graphical_session():
        return False
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
        finally:
            os.close(null)
        try:
            return bool(webbrowser.open(url))
        except webbrowser.Error:
            return False
    finally:
        os.dup2(saved, 1)
        os.close(saved)

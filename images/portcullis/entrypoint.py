"""Entry point of the frozen Portcullis server (PyInstaller runs this file as ``__main__``).

There is no shell in the image, so the OpenSSL environment for FIPS mode is set here, by the
process itself, before anything loads OpenSSL: ``configure_environment()`` points both OpenSSL
libraries at the bundled provider and ``enforce_or_exit()`` refuses to go on (exit 78, one line
on stderr) unless the provider is really working. Only then is the rest of the server imported.
Both calls do nothing when ``PORTCULLIS_FIPS`` is not set (the image sets it to 1).
"""

import sys

from portcullis import fips

fips.configure_environment()
fips.enforce_or_exit()

from portcullis.cli import main  # noqa: E402  # imported only after the FIPS gate

sys.exit(main())

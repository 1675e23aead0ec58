"""Distribute: put a release where users get it, and generate how they install it.

Owns the OCI registry client (``registry``), publishing by digest with tags moved last
(``publish``), Helm chart packaging and pushing (``chart``), the generated Flux install path
(``flux``) and the throwaway authenticated registry ``make release`` and the tests start
(``local_registry``).
May import the OCI model, the plan, the release manifest and ``attest``'s format and staged
attachments (what ``publish`` pushes). Must not import ``attest.sign`` (publishing needs no key),
``verify``, ``release``, ``cli`` or ``tests``.
"""

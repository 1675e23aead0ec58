"""``portcullis import-dex``: bring a Dex installation's state over without logging anyone out.

``source`` reads Dex's SQL schema (every migration level Dex 2.30-2.45 leaves) or a dump of its
``dex.coreos.com`` custom resources; ``plan`` maps those records onto ours and compares them with
the target storage (the dry run); the write is ``Storage.import_batch``, one transaction.

Layering: this package sits beside web/kube/admin (it may use oidc, keys, storage and config,
and nothing imports it but the CLI), so the import uses exactly the digests, key formats and
records the running server reads.
"""

"""The Kubernetes adapter: the TokenReview authentication webhook (its own app on its own
listener), the kubeconfig page, and the kubeconfig / apiserver set-up they render.

Owns: the kubeconfig page's paths (``page.KUBECONFIG_CALLBACK_PATH``, and
``page.cluster_path``/``cluster_callback_url`` for clusters trusting another issuer) and the
implicit registration of its callback on its client, the claim-to-user mapping of reviews, the
checks of webhook callers against the Kubernetes API.

Must not: import web, admin or the assembly, nor open connectors. The page renders through the
renderer, resolves client addresses through the callable the assembly hands in
(``page.PageRenderer``, ``page.ClientAddress``), and signs in at other issuers through the
relying parties the assembly opens (``page.RelyingParty``: upstream ``oidc`` connectors).
"""

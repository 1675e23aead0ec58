"""The Kubernetes adapter: the TokenReview authentication webhook (its own app on its own
listener), the kubeconfig page, and the kubeconfig / apiserver set-up they render.

Owns: the kubeconfig page's paths (``page.KUBECONFIG_CALLBACK_PATH``) and the implicit
registration of its callback on its client, the claim-to-user mapping of reviews, the checks of
webhook callers against the Kubernetes API.

Must not: import web, admin or the assembly. The page renders through the renderer and resolves
client addresses through the callable the assembly hands in (``page.PageRenderer``,
``page.ClientAddress``).
"""

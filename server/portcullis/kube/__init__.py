"""Kubernetes integration: the TokenReview authentication webhook and the kubeconfig page."""

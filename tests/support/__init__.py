"""Shared test harnesses: each module starts one real component or drives one peer.

``issuer`` (a Portcullis server process from a YAML config), ``oidc_checks`` (client-side OIDC
steps), ``postgres``, ``registry`` (docker-registry with htpasswd), ``chart``, ``image`` (runc),
``admin`` (gRPC stubs and TLS material), ``kube`` (serving certs, a fake Kubernetes API).

Import as ``tests.support.<module>``: pytest's ``pythonpath = ["."]`` puts the repository root on
``sys.path``, so no conftest edits ``sys.path``. Harnesses find free loopback ports, keep their
state in temporary directories and stop what they start by PID.
"""

"""The admin adapter: Dex's gRPC API (``api.proto`` v2) so existing Dex API clients work, with
revocation operations; ``server.start_admin_server`` serves it on ``grpc.addr``.

Owns: the gRPC servicer (``service``) and its listener (``server``), including the admin
API's FIPS policy.

Must not: import web, kube or the assembly. It changes state only through the oidc core and
storage, as the HTTP endpoints do.
"""

"""The gRPC listener for the admin API (``grpc.addr``).

grpcio cannot adopt a socket bound elsewhere, so unlike the HTTP listeners this one is bound by
the gRPC server itself, in exactly one process (the single process, or worker 0 of
``--workers N``) with SO_REUSEPORT off: a taken port is an error, never a silent share.
``serve.bind_listeners`` probes the address first so a taken port still fails before any
worker starts. Handlers block on storage, so they run in a small thread pool.

TLS comes from grpcio's bundled TLS stack (BoringSSL), not the system OpenSSL: it always offers
TLS 1.2 and 1.3 (the config refuses version settings it cannot enforce) and is outside the
FIPS provider that guards the HTTP listeners, so FIPS mode refuses gRPC TLS at config time
(docs/admin-api.md).
"""

from __future__ import annotations

import logging
import socket
from concurrent import futures
from pathlib import Path

import grpc

from portcullis.admin import api_pb2 as pb
from portcullis.admin import api_pb2_grpc as pb_grpc
from portcullis.admin import revocation_pb2 as revocation_pb
from portcullis.admin import revocation_pb2_grpc as revocation_grpc
from portcullis.admin.revocation_service import RevocationService
from portcullis.admin.service import DexAdminService
from portcullis.config.model import GRPCSection
from portcullis.oidc.provider import Provider

log = logging.getLogger("portcullis.admin")

HANDLER_THREADS = 8


class AdminListenError(OSError):
    """The gRPC admin listener could not be started (bad address, port taken, TLS files)."""


def _credentials(section: GRPCSection) -> grpc.ServerCredentials:
    assert section.tls_cert
    assert section.tls_key
    try:
        cert = Path(section.tls_cert).read_bytes()
        key = Path(section.tls_key).read_bytes()
        ca = Path(section.tls_client_ca).read_bytes() if section.tls_client_ca else None
    except OSError as exc:
        raise AdminListenError(f"grpc: cannot read {exc.filename}: {exc.strerror}") from None
    # With a client CA every caller must present a certificate it signed (mutual TLS).
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def grpc_address(addr: str) -> str:
    """Go (and so Dex) reads an empty host as "every interface"; grpcio needs it spelled out."""
    host, _, port = addr.rpartition(":")
    return f"0.0.0.0:{port}" if not host else addr


def _bind_problem(address: str) -> str:
    """grpcio's bind error only says "failed"; ask the OS for the reason."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_server((host.strip("[]"), int(port))):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError:
        pass
    return "grpcio could not bind it"


def start_admin_server(section: GRPCSection, provider: Provider, *, fips_mode: bool) -> grpc.Server:
    """Bind ``grpc.addr`` and start serving; raises AdminListenError if it cannot listen."""
    assert section.addr
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=HANDLER_THREADS, thread_name_prefix="grpc-admin"),
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_DexServicer_to_server(DexAdminService(provider, fips_mode=fips_mode), server)
    revocation_grpc.add_RevocationServicer_to_server(RevocationService(provider), server)
    if section.reflection:
        from grpc_reflection.v1alpha import reflection

        service_name = pb.DESCRIPTOR.services_by_name["Dex"].full_name
        revocation_name = revocation_pb.DESCRIPTOR.services_by_name["Revocation"].full_name
        reflection.enable_server_reflection(
            (service_name, revocation_name, reflection.SERVICE_NAME), server
        )
    address = grpc_address(section.addr)
    try:
        if section.tls_cert:
            server.add_secure_port(address, _credentials(section))
        else:
            server.add_insecure_port(address)
    except RuntimeError:
        raise AdminListenError(
            f"cannot listen on grpc.addr {section.addr}: {_bind_problem(address)}"
        ) from None
    server.start()
    log.info(
        "admin API (gRPC) on %s (%s)",
        section.addr,
        "mutual TLS" if section.tls_client_ca else "TLS" if section.tls_cert else "plaintext",
    )
    return server

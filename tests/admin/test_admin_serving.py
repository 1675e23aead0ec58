"""How the admin API listener is served: mutual TLS, the secure default for non-loopback
addresses, a taken port, several workers, and the committed stubs matching api.proto."""

from __future__ import annotations

import filecmp
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
import yaml
from portcullis.admin import api_pb2 as pb
from portcullis.admin.server import grpc_address

from tests.support.admin import TLSFiles, stub
from tests.support.issuer import PORTCULLIS, REPO_ROOT, IssuerExitError, StartIssuer, free_port

ADMIN_DIR = REPO_ROOT / "server" / "portcullis" / "admin"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


def _check_config(tmp_path: Path, section: dict[str, object]) -> subprocess.CompletedProcess[str]:
    config = {
        "issuer": "http://127.0.0.1:5556/dex",
        "storage": {"type": "memory"},
        "web": {"http": "127.0.0.1:5556"},
        "enablePasswordDB": True,
        "grpc": section,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(PORTCULLIS), "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mutual_tls_admits_only_clients_with_a_trusted_certificate(
    start_issuer: StartIssuer, tls_files: TLSFiles
) -> None:
    address = f"127.0.0.1:{free_port()}"
    start_issuer(
        {
            "grpc": {
                "addr": address,
                "tlsCert": str(tls_files.server_cert),
                "tlsKey": str(tls_files.server_key),
                "tlsClientCA": str(tls_files.ca),
            }
        }
    )
    ca = tls_files.ca.read_bytes()
    trusted = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=tls_files.client_key.read_bytes(),
        certificate_chain=tls_files.client_cert.read_bytes(),
    )
    assert stub(address, trusted).GetVersion(pb.VersionReq(), timeout=10).api == 3

    untrusted = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=tls_files.other_client_key.read_bytes(),
        certificate_chain=tls_files.other_client_cert.read_bytes(),
    )
    refused: list[grpc.ChannelCredentials | None] = [
        grpc.ssl_channel_credentials(root_certificates=ca),  # no client certificate
        untrusted,  # a certificate from a CA the server does not trust
        None,  # plaintext
    ]
    for credentials in refused:
        with pytest.raises(grpc.RpcError) as info:
            stub(address, credentials).GetVersion(pb.VersionReq(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_tls_without_client_ca_serves_any_client(
    start_issuer: StartIssuer, tls_files: TLSFiles
) -> None:
    address = f"127.0.0.1:{free_port()}"
    start_issuer(
        {
            "grpc": {
                "addr": address,
                "tlsCert": str(tls_files.server_cert),
                "tlsKey": str(tls_files.server_key),
            }
        }
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca.read_bytes())
    clients = stub(address, credentials).ListClients(pb.ListClientReq(), timeout=10).clients
    assert "example-app" in {c.id for c in clients}


def test_plaintext_admin_api_off_loopback_needs_an_explicit_opt_in(tmp_path: Path) -> None:
    refused = _check_config(tmp_path, {"addr": "0.0.0.0:5557"})
    assert refused.returncode == 2
    output = refused.stdout + refused.stderr
    assert "grpc" in output
    assert "allowInsecure" in output
    assert "without TLS" in output
    allowed = _check_config(tmp_path, {"addr": "0.0.0.0:5557", "allowInsecure": True})
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert _check_config(tmp_path, {"addr": "127.0.0.1:5557"}).returncode == 0
    assert _check_config(tmp_path, {"addr": "[::1]:5557"}).returncode == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"tlsCert": "/x.crt"}, "tlsCert and tlsKey must be set together"),
        ({"tlsClientCA": "/ca.crt"}, "tlsClientCA"),
        ({"tlsCert": "/a", "tlsKey": "/b", "tlsMinVersion": "1.3"}, "tlsMinVersion"),
        ({"tlsCert": "/a", "tlsKey": "/b", "tlsMaxVersion": "1.2"}, "tlsMaxVersion"),
    ],
)
def test_tls_settings_grpcio_cannot_honour_are_refused(
    tmp_path: Path, section: dict[str, object], message: str
) -> None:
    result = _check_config(tmp_path, {"addr": "127.0.0.1:5557", **section})
    assert result.returncode == 2
    output = result.stdout + result.stderr
    problems = [line.strip() for line in output.splitlines() if line.startswith("  ")]
    assert len(problems) == 1, output
    assert problems[0].startswith("grpc")
    assert message in problems[0]


def test_a_taken_grpc_port_stops_the_server_with_a_clear_error(start_issuer: StartIssuer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        issuer = start_issuer({"grpc": {"addr": address}}, run=False)
        with pytest.raises(IssuerExitError) as info:
            issuer.start()
    assert issuer.proc is not None
    assert issuer.proc.returncode == 1
    assert f"cannot listen on grpc.addr {address}: Address already in use" in str(info.value)


def test_several_workers_serve_one_admin_api_that_shares_storage(
    start_issuer: StartIssuer,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    issuer = start_issuer({"grpc": {"addr": address}}, run=False)
    issuer.serve_args = ["--workers", "2"]
    issuer.start()
    api = stub(address)
    # Readiness is HTTP's: the worker that serves gRPC may still be starting.
    created = api.CreateClient(
        pb.CreateClientReq(client=pb.Client(id="multi")), timeout=15, wait_for_ready=True
    )
    issuer.remember(created.client.secret)
    # Whichever worker answers over HTTP sees the client the admin API stored.
    for _ in range(6):
        token = issuer.token(
            {"grant_type": "client_credentials"}, auth=("multi", created.client.secret)
        )
        assert token.status_code == 200, token.text
    # finish_issuer (fixture teardown) requires exit code 0 after SIGTERM.


def test_committed_stubs_match_api_proto(tmp_path: Path) -> None:
    """`make admin-proto` regenerates the modules; they must equal the committed ones."""
    out = tmp_path / "generated"
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "admin-proto", f"ADMIN_PROTO_OUT={out}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in GENERATED:
        fresh = out / "portcullis" / "admin" / name
        assert fresh.exists(), name
        assert filecmp.cmp(fresh, ADMIN_DIR / name, shallow=False), (
            f"{name} is stale: run `make admin-proto` and commit the result"
        )


def test_an_empty_host_means_every_interface_as_in_dex() -> None:
    assert grpc_address(":5557") == "0.0.0.0:5557"
    assert grpc_address("127.0.0.1:5557") == "127.0.0.1:5557"
    assert grpc_address("[::1]:5557") == "[::1]:5557"


def test_wire_names_are_dexs() -> None:
    """Dex clients address methods as /api.Dex/<Method>; the package and service must match."""
    service = pb.DESCRIPTOR.services_by_name["Dex"]
    assert service.full_name == "api.Dex"
    assert pb.DESCRIPTOR.package == "api"
    ref = pb.RefreshTokenRef.DESCRIPTOR.fields_by_name
    assert (ref["created_at"].number, ref["last_used"].number) == (5, 6)

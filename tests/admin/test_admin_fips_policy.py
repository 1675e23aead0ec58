"""The admin API's password-hash policy in FIPS mode: PBKDF2 accepted, bcrypt refused.

FIPS mode of a whole server needs the OpenSSL FIPS provider (tests/image covers that), so this
test serves the admin service in-process — real gRPC server, real client, memory storage — with
the FIPS policy switched on for the service."""

from __future__ import annotations

from collections.abc import Iterator

import bcrypt
import grpc
import pytest
from portcullis.admin import api_pb2 as pb
from portcullis.admin.server import start_admin_server
from portcullis.config.model import GRPCSection
from portcullis.issuer import create_issuer, parse_config
from portcullis.passwords import hash_password
from portcullis.storage.memory import MemoryStorage

from tests.support.admin import stub
from tests.support.issuer import free_port

CONFIG = """
issuer: http://127.0.0.1:5556/dex
storage: {type: memory}
web: {http: 127.0.0.1:5556}
enablePasswordDB: true
"""


@pytest.fixture
def fips_api() -> Iterator[tuple[str, MemoryStorage]]:
    storage = MemoryStorage()
    issuer = create_issuer(parse_config(CONFIG), storage=storage)
    address = f"127.0.0.1:{free_port()}"
    server = start_admin_server(GRPCSection(addr=address), issuer.provider, fips_mode=True)
    try:
        yield address, storage
    finally:
        server.stop(grace=None).wait(5)


def test_fips_mode_refuses_bcrypt_and_accepts_pbkdf2(fips_api: tuple[str, MemoryStorage]) -> None:
    address, storage = fips_api
    api = stub(address)
    bcrypt_entry = pb.Password(
        email="b@example.com",
        hash=bcrypt.hashpw(b"secret-pass", bcrypt.gensalt(rounds=10)),
        user_id="b-1",
    )
    with pytest.raises(grpc.RpcError) as info:
        api.CreatePassword(pb.CreatePasswordReq(password=bcrypt_entry), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FIPS" in (info.value.details() or "")
    assert storage.list_passwords() == []

    pbkdf2 = hash_password("secret-pass", scheme="pbkdf2", cost=100_000)
    entry = pb.Password(email="p@example.com", hash=pbkdf2.encode(), user_id="p-1")
    assert not api.CreatePassword(pb.CreatePasswordReq(password=entry), timeout=10).already_exists
    assert storage.get_password("p@example.com").hash == pbkdf2
    verify = pb.VerifyPasswordReq(email="p@example.com", password="secret-pass")
    assert api.VerifyPassword(verify, timeout=10).verified
    update = pb.UpdatePasswordReq(email="p@example.com", new_hash=bcrypt_entry.hash)
    with pytest.raises(grpc.RpcError) as info:
        api.UpdatePassword(update, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "new_hash" in (info.value.details() or "")

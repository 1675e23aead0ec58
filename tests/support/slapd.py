"""A real, throwaway OpenLDAP server for tests (Debian's ``slapd`` + ``ldap-utils``).

One server per test session (per xdist worker): a ``slapd.conf`` and an MDB database in a private
temp dir, seeded offline with ``slapadd`` from :data:`SEED_LDIF`, then ``/usr/sbin/slapd`` in the
foreground listening only on loopback:

* ``ldap://127.0.0.1:<ldap_port>``   plain LDAP, StartTLS offered;
* ``ldaps://127.0.0.1:<ldaps_port>`` LDAPS with a certificate for ``localhost``/``127.0.0.1``;
* ``ldaps://127.0.0.2:<ldaps_port>`` the same certificate on an address it does not name, so
  tests can prove that the client checks the host name.

The certificates come from a throwaway CA made with ``cryptography``; a second, unrelated CA
exists to show that a wrong trust anchor is refused. slapd asks for (but does not require) client
certificates (``TLSVerifyClient try``): one signed by a foreign CA breaks the handshake, which is
how tests see that ``clientCert`` is really presented. Changes during tests go through
``ldapmodify``/``ldapdelete`` (OpenLDAP's own client, not the ldap3 code under test). The server is
stopped by its PID.

Use from a conftest::

    from tests.support.slapd import slapd_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
LDAPMODIFY = Path("/usr/bin/ldapmodify")
LDAPDELETE = Path("/usr/bin/ldapdelete")
LDAPSEARCH = Path("/usr/bin/ldapsearch")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
SERVICE_DN = f"cn=portcullis,ou=Services,{BASE_DN}"
PEOPLE_DN = f"ou=People,{BASE_DN}"
GROUPS_DN = f"ou=Groups,{BASE_DN}"
SERVICE_PASSWORD = "service-secret-9f2c"

#: Users, with their passwords (in the clear here: the directory is throwaway).
PASSWORDS = {
    "jane": "jane-pass-1",
    "john": "john-pass-2",
    "nomail": "nomail-pass-3",
    "*)(uid=*": "bait-pass-4",
    "twin": "twin-pass-5",
}

SEED_LDIF = f"""\
dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: {PEOPLE_DN}
objectClass: organizationalUnit
ou: People

dn: {GROUPS_DN}
objectClass: organizationalUnit
ou: Groups

dn: ou=Services,{BASE_DN}
objectClass: organizationalUnit
ou: Services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: portcullis
userPassword: {SERVICE_PASSWORD}

dn: uid=jane,{PEOPLE_DN}
objectClass: inetOrgPerson
uid: jane
cn: Jane Doe
sn: Doe
displayName: Jane
mail: jane@example.org
userPassword: {PASSWORDS["jane"]}

dn: uid=john,{PEOPLE_DN}
objectClass: inetOrgPerson
uid: john
cn: John Smith
sn: Smith
mail: john@example.org
userPassword: {PASSWORDS["john"]}

dn: uid=nomail,{PEOPLE_DN}
objectClass: inetOrgPerson
uid: nomail
cn: No Mail
sn: Mail
userPassword: {PASSWORDS["nomail"]}

# The injection bait: a real user whose uid is a filter fragment. Escaped correctly, typing it
# logs in as this user and nobody else; pasted into a filter unescaped it matches everyone.
dn: cn=bait,{PEOPLE_DN}
objectClass: inetOrgPerson
cn: bait
sn: Bait
uid: *)(uid=*
mail: bait@example.org
userPassword: {PASSWORDS["*)(uid=*"]}

# Two entries with the same mail: a userSearch on mail is ambiguous for them.
dn: uid=twin,{PEOPLE_DN}
objectClass: inetOrgPerson
uid: twin
cn: Twin One
sn: One
mail: twins@example.org
userPassword: {PASSWORDS["twin"]}

dn: uid=twin2,{PEOPLE_DN}
objectClass: inetOrgPerson
uid: twin2
cn: Twin Two
sn: Two
mail: twins@example.org
userPassword: twin2-pass

dn: cn=admins,{GROUPS_DN}
objectClass: groupOfNames
cn: admins
member: uid=jane,{PEOPLE_DN}

dn: cn=developers,{GROUPS_DN}
objectClass: groupOfNames
cn: developers
member: uid=jane,{PEOPLE_DN}
member: uid=john,{PEOPLE_DN}

# posixGroup style: members by uid value, not DN.
dn: cn=ops,{GROUPS_DN}
objectClass: posixGroup
cn: ops
gidNumber: 5001
memberUid: jane

# Nesting: engineering contains developers, staff contains engineering; loop-a and loop-b
# contain each other (a cycle a group walk must survive) and loop-b contains john.
dn: cn=engineering,{GROUPS_DN}
objectClass: groupOfNames
cn: engineering
member: cn=developers,{GROUPS_DN}

dn: cn=staff,{GROUPS_DN}
objectClass: groupOfNames
cn: staff
member: cn=engineering,{GROUPS_DN}

dn: cn=loop-a,{GROUPS_DN}
objectClass: groupOfNames
cn: loop-a
member: cn=loop-b,{GROUPS_DN}

dn: cn=loop-b,{GROUPS_DN}
objectClass: groupOfNames
cn: loop-b
member: cn=loop-a,{GROUPS_DN}
member: uid=john,{PEOPLE_DN}
"""


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TlsFiles:
    ca: Path  # the CA that signed the server and good client certificates
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by ``ca``
    client_key: Path
    foreign_ca: Path  # unrelated CA: trusting only it must fail
    foreign_client_cert: Path  # signed by ``foreign_ca``: slapd rejects it
    foreign_client_key: Path


def write_tls_material(directory: Path) -> TlsFiles:
    """Two throwaway CAs; a server certificate for localhost/127.0.0.1; client certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def issue(
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        common_name: str,
        usage: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName] | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca[1].public_key()),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return builder.sign(ca[1], hashes.SHA256()), key

    ca = make_ca("portcullis test LDAP CA")
    foreign = make_ca("some other CA")
    server = issue(
        ca,
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = issue(ca, "portcullis-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    foreign_client = issue(foreign, "portcullis-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        ca=write_cert(ca[0], directory / "ca.crt"),
        server_cert=write_cert(server[0], directory / "server.crt"),
        server_key=write_key(server[1], directory / "server.key"),
        client_cert=write_cert(client[0], directory / "client.crt"),
        client_key=write_key(client[1], directory / "client.key"),
        foreign_ca=write_cert(foreign[0], directory / "foreign-ca.crt"),
        foreign_client_cert=write_cert(foreign_client[0], directory / "foreign-client.crt"),
        foreign_client_key=write_key(foreign_client[1], directory / "foreign-client.key"),
    )


@dataclass
class SlapdServer:
    """A running slapd; ``config()`` gives a Dex-format ``ldap`` connector config for it."""

    root: Path
    ldap_port: int
    ldaps_port: int
    tls: TlsFiles
    proc: subprocess.Popen[bytes]
    log_path: Path
    admin_password_file: Path

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Plain-LDAP config with the service account, uid logins and DN + posix matchers."""
        settings: dict[str, Any] = {
            "host": f"127.0.0.1:{self.ldap_port}",
            "insecureNoSSL": True,
            "bindDN": SERVICE_DN,
            "bindPW": SERVICE_PASSWORD,
            "usernamePrompt": "Directory username",
            "userSearch": {
                "baseDN": PEOPLE_DN,
                "filter": "(objectClass=inetOrgPerson)",
                "username": "uid",
                "idAttr": "uid",
                "emailAttr": "mail",
                "nameAttr": "cn",
                "preferredUsernameAttr": "uid",
            },
            "groupSearch": {
                "baseDN": GROUPS_DN,
                "filter": "(|(objectClass=groupOfNames)(objectClass=posixGroup))",
                "userMatchers": [
                    {"userAttr": "DN", "groupAttr": "member"},
                    {"userAttr": "uid", "groupAttr": "memberUid"},
                ],
                "nameAttr": "cn",
            },
        }
        settings.update(overrides)
        return settings

    def _client(self, tool: Path, *args: str, ldif: str | None = None) -> str:
        result = subprocess.run(
            [
                str(tool),
                "-x",
                "-H",
                self.ldap_url,
                "-D",
                ADMIN_DN,
                "-y",
                str(self.admin_password_file),
                *args,
            ],
            input=ldif.encode() if ldif is not None else None,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise RuntimeError(f"{tool.name} failed ({result.returncode}): {stderr}")
        return result.stdout.decode(errors="replace")

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change record (``changetype: add/modify/delete``) with ldapmodify."""
        self._client(LDAPMODIFY, ldif=ldif)

    def delete(self, dn: str) -> None:
        self._client(LDAPDELETE, dn)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def bind_count(self, dn: str) -> int:
        """How many BIND requests for ``dn`` slapd logged (its stats log names every one)."""
        needle = f'BIND dn="{dn.lower()}"'
        return sum(needle in line.lower() for line in self.logs().splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _slapd_conf(root: Path, tls: TlsFiles, admin_password: str) -> str:
    schema = Path("/etc/ldap/schema")
    includes = "\n".join(
        f"include {schema / name}.schema" for name in ("core", "cosine", "nis", "inetorgperson")
    )
    return f"""\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
TLSCACertificateFile {tls.ca}
TLSCertificateFile {tls.server_cert}
TLSCertificateKeyFile {tls.server_key}
TLSVerifyClient try

database mdb
maxsize 67108864
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {admin_password}
directory {root}/data

# Passwords: only for binding and for their owner. Everything else: bound users read,
# anonymous clients see nothing (so the connector's service bind is really needed).
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by users read
  by * none
"""


def start_slapd(timeout: float = 30.0) -> SlapdServer:
    """Write the config, seed the database, start slapd; raise with its log if it stays down."""
    for tool in (SLAPD, SLAPADD, LDAPMODIFY, LDAPSEARCH):
        if not tool.exists():
            raise RuntimeError(f"{tool} missing: `make test` installs Debian slapd and ldap-utils")
    root = Path(tempfile.mkdtemp(prefix="portcullis-slapd-"))
    (root / "data").mkdir()
    tls = write_tls_material(root)
    admin_password = os.urandom(12).hex()
    admin_password_file = root / "admin.pw"
    admin_password_file.write_text(admin_password)  # ldap-utils -y: the file's exact bytes
    admin_password_file.chmod(0o600)
    conf = root / "slapd.conf"
    conf.write_text(_slapd_conf(root, tls, admin_password))
    seed = root / "seed.ldif"
    seed.write_text(SEED_LDIF)
    loaded = subprocess.run(
        [str(SLAPADD), "-f", str(conf), "-l", str(seed)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if loaded.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"slapadd failed: {loaded.stderr.decode(errors='replace')}")
    ldap_port = _free_port()
    ldaps_port = _free_port()
    urls = (
        f"ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/ "
        f"ldaps://127.0.0.2:{ldaps_port}/"
    )
    log_path = root / "slapd.log"
    with log_path.open("wb") as log_file:
        # -d keeps slapd in the foreground (its PID is ours to stop); "stats" logs connections,
        # binds and searches, which some tests read.
        proc = subprocess.Popen(
            [str(SLAPD), "-d", "stats", "-f", str(conf), "-h", urls],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = SlapdServer(
        root=root,
        ldap_port=ldap_port,
        ldaps_port=ldaps_port,
        tls=tls,
        proc=proc,
        log_path=log_path,
        admin_password_file=admin_password_file,
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            logs = server.logs()
            server.stop()
            raise RuntimeError(f"slapd exited with {proc.returncode}:\n{logs[-4000:]}")
        probe = subprocess.run(
            [str(LDAPSEARCH), "-x", "-H", server.ldap_url, "-b", "", "-s", "base", "1.1"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if probe.returncode == 0:
            return server
        if time.monotonic() > deadline:
            logs = server.logs()
            server.stop()
            raise RuntimeError(f"slapd did not answer within {timeout:.0f} s:\n{logs[-4000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def slapd_server() -> Iterator[SlapdServer]:
    server = start_slapd()
    try:
        yield server
    finally:
        server.stop()

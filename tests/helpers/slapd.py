"""A real OpenLDAP slapd for tests: a static slapd.conf in a temporary folder (core, cosine, nis,
inetorgperson schemas; back_mdb; the memberof overlay), started on a free port, seeded with ldapadd,
stopped by pid. Optionally with a TLS certificate (StartTLS / ldaps) issued by a test CA.

Missing slapd or ldap-utils is an error (``.ci/run`` installs them), never a skip."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.services import ServiceMissing, free_port

SUFFIX = "dc=acme,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret-for-tests"
SERVICE_DN = f"cn=idhub,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret-for-tests"
PASSWORDS = {"ada": "correct horse battery", "bob": "bob's password 42", "star": "star-password"}

SEED = f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Acme
dc: acme

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: simpleSecurityObject
objectClass: organizationalRole
cn: idhub
userPassword: {SERVICE_PW}

dn: uid=ada,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: ada
cn: Ada Lovelace
givenName: Ada
sn: Lovelace
displayName: Ada Lovelace
mail: ada@acme.test
userPassword: {PASSWORDS['ada']}

dn: uid=bob,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: bob
cn: Bob Builder
givenName: Bob
sn: Builder
mail: bob@acme.test
userPassword: {PASSWORDS['bob']}

dn: uid=star,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: star
cn: Star Wildcard
sn: Wildcard
mail: star@acme.test
userPassword: {PASSWORDS['star']}

dn: uid=nopass,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: nopass
cn: No Password
sn: Password
mail: nopass@acme.test

dn: cn=engineers,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: engineers
member: uid=ada,ou=people,{SUFFIX}

dn: cn=admins,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: admins
member: uid=ada,ou=people,{SUFFIX}
member: uid=bob,ou=people,{SUFFIX}
"""


def _which(name: str) -> str:
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        raise ServiceMissing(f"{name} is not installed (Debian packages slapd and ldap-utils; .ci/run installs them)")
    return found


def _tls_files(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``host`` (IP SAN and DNS localhost)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idhub test LDAP CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    return ca_file, cert_file, key_file


class Slapd:
    def __init__(self, tls: bool = False) -> None:
        self.tls = tls
        self.port = free_port()
        self.ldaps_port = free_port() if tls else None
        self.dir = Path(tempfile.mkdtemp(prefix="idhub-slapd-"))
        self.proc: subprocess.Popen | None = None
        self.ca_file: str | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def conn(self, **kw) -> dict:
        """Settings of an idhub LDAP connection to this server (the contract's config-file keys)."""
        base = {"slug": "corp", "name": "Corp directory", "protocol": "ldap", "url": self.url,
                "bind_dn": SERVICE_DN, "bind_password": SERVICE_PW, "user_search_base": f"ou=people,{SUFFIX}",
                "user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))", "timeout": 3}
        base.update(kw)
        return base

    def _config(self) -> str:
        schema = "/etc/ldap/schema"
        tls = ""
        if self.tls:
            ca, cert, key = _tls_files(self.dir)
            self.ca_file = str(ca)
            tls = f"TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n"
        return f"""include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/nis.schema
include {schema}/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {self.dir}/slapd.pid
argsfile {self.dir}/slapd.args
{tls}
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {self.dir}/db
index objectClass eq
index uid eq
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by dn.exact="{SERVICE_DN}" read
  by self read
  by * none
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
"""

    def start(self, timeout: float = 15.0) -> Slapd:
        slapd, ldapadd = _which("slapd"), _which("ldapadd")
        (self.dir / "db").mkdir()
        conf = self.dir / "slapd.conf"
        conf.write_text(self._config())
        log = open(self.dir / "slapd.log", "wb")  # noqa: SIM115
        urls = self.url + "/" + (f" {self.ldaps_url}/" if self.tls else "")
        self.proc = subprocess.Popen([slapd, "-f", str(conf), "-h", urls, "-d", "0"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceMissing("slapd exited: " + (self.dir / "slapd.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServiceMissing("slapd did not start listening") from None
                time.sleep(0.1)
        seeded = subprocess.run([ldapadd, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                                input=SEED.encode(), capture_output=True, timeout=30)
        if seeded.returncode != 0:
            self.stop()
            raise ServiceMissing("ldapadd failed: " + seeded.stderr.decode()[-2000:])
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

"""``fed8 certs DIR``: a certificate authority and a server certificate for a federation's TLS.

A SuperLink on a real network serves TLS (``flower-superlink --ssl-ca-certfile ca.crt
--ssl-certfile server.crt --ssl-keyfile server.key``) and every SuperNode trusts the CA
(``flower-supernode --root-certificates ca.crt``). This writes, with ``cryptography``:

* ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-256, ``BasicConstraints(ca, path 0)``,
  may sign certificates only), the file every node gets;
* ``server.crt`` / ``server.key``: the server's certificate, signed by the CA, valid for
  TLS server authentication for exactly the host names and IP addresses given
  (subjectAltName), ``days`` long.

With ``--nodes N`` it also writes SuperNode authentication keys (:func:`make_node_keys`):
``node-<i>.key`` (ECDSA P-384, OpenSSH private key, for ``flower-supernode
--auth-supernode-private-key``) and ``node-<i>.pub`` (OpenSSH public key, for ``flwr
supernode register``), so that a SuperLink started with ``--enable-supernode-auth``
admits only the registered nodes.

Private keys are written mode 0600 and never overwritten unless asked. Keep ``ca.key``
off the server if you can: it is only needed to issue certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Sequence

from ._io import atomic_write_bytes
from .errors import ConfigError

__all__ = ["CERT_FILES", "make_certificates", "make_node_keys"]

CERT_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")
_DNS = re.compile(r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                  r"[A-Za-z0-9])?)*$")


def _san(hosts: Sequence[str]):
    from cryptography import x509

    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
            continue
        except ValueError:
            pass
        if not _DNS.match(h):
            raise ConfigError(f"host {h!r} is neither an IP address nor a DNS name; give the names clients use to "
                              "reach the SuperLink, e.g. --host superlink.example.org --host 10.0.0.5.")
        names.append(x509.DNSName(h))
    return names


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(path, pem)
    os.chmod(path, 0o600)


def make_certificates(out: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), *, days: int = 365,
                      force: bool = False) -> dict[str, Path]:
    """Write the CA and the server certificate into ``out``; return the four paths by name.

    Raises
    ------
    ConfigError
        No host, a host that is not an IP address or DNS name, ``days < 1``, or files that
        exist without ``force``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ConfigError("fed8 certs needs at least one --host (the name or address clients use for the SuperLink).")
    if days < 1:
        raise ConfigError(f"--days must be >= 1; got {days}.")
    out = Path(out)
    paths = {name: out / name for name in CERT_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} exist; pass --force to replace them (clients that trust the old "
                          "ca.crt will then refuse the new server certificate).")
    san = _san(hosts)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fed8 federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName(san), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                           crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))

    out.mkdir(parents=True, exist_ok=True)
    _write_key(paths["ca.key"], ca_key)
    _write_key(paths["server.key"], key)
    atomic_write_bytes(paths["ca.crt"], ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths["server.crt"], server.public_bytes(serialization.Encoding.PEM))
    return paths


def make_node_keys(out: str | Path, count: int, *, force: bool = False) -> list[tuple[Path, Path]]:
    """Write ``count`` SuperNode authentication key pairs; return ``[(private key, public key), ...]``.

    Raises
    ------
    ConfigError
        ``count < 1``, or files that exist without ``force``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if count < 1:
        raise ConfigError(f"--nodes must be >= 1; got {count}.")
    out = Path(out)
    pairs = [(out / f"node-{i}.key", out / f"node-{i}.pub") for i in range(count)]
    existing = [str(p) for pair in pairs for p in pair if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing[:4])} exist; pass --force to replace them (the registered public "
                          "keys then no longer match).")
    out.mkdir(parents=True, exist_ok=True)
    for priv, pub in pairs:
        key = ec.generate_private_key(ec.SECP384R1())
        atomic_write_bytes(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
        os.chmod(priv, 0o600)
        atomic_write_bytes(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH) + b"\n")
    return pairs

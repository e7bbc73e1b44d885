"""``fed8 certs``: the CA and server certificate work for a real TLS handshake on 127.0.0.1."""

import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fed8.certs import make_certificates
from fed8.cli import main
from fed8.errors import ConfigError


def _handshake(d, server_name: str) -> str:
    """Serve one TLS connection with server.crt on 127.0.0.1 and connect to it trusting only ca.crt."""
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(d / "server.crt", d / "server.key")
    cli_ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]
        lsock.settimeout(10)

        def serve():
            try:
                conn, _ = lsock.accept()
                with srv_ctx.wrap_socket(conn, server_side=True) as s:
                    s.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with cli_ctx.wrap_socket(raw, server_hostname=server_name) as s:
                    return s.recv(2).decode()
        finally:
            t.join(10)


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path):
    paths = make_certificates(tmp_path, ["localhost", "127.0.0.1", "superlink.example.org"], days=30)
    ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
    srv = x509.load_pem_x509_certificate(paths["server.crt"].read_bytes())
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, ec.ECDSA(srv.signature_hash_algorithm))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (srv.not_valid_after_utc - srv.not_valid_before_utc).days == 30
    for key in ("ca.key", "server.key"):
        assert paths[key].stat().st_mode & 0o777 == 0o600


def test_tls_handshake_on_loopback_accepts_the_names_and_refuses_others(tmp_path):
    make_certificates(tmp_path, ["localhost", "127.0.0.1"])
    assert _handshake(tmp_path, "localhost") == "ok"
    assert _handshake(tmp_path, "127.0.0.1") == "ok"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        _handshake(tmp_path, "other.example.org")
    other = tmp_path / "other"
    make_certificates(other, ["localhost"])  # a server certificate from another CA is refused
    (tmp_path / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, "localhost")


def test_certs_cli_refuses_overwrite_and_bad_hosts(tmp_path, capsys):
    assert main(["certs", str(tmp_path / "c")]) == 0
    assert "--ssl-certfile" in capsys.readouterr().out
    before = (tmp_path / "c/ca.crt").read_bytes()
    assert main(["certs", str(tmp_path / "c")]) == 2
    assert "--force" in capsys.readouterr().err and (tmp_path / "c/ca.crt").read_bytes() == before
    assert main(["certs", str(tmp_path / "c"), "--force"]) == 0 and (tmp_path / "c/ca.crt").read_bytes() != before
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        make_certificates(tmp_path / "d", ["bad host!"])
    assert main(["certs", str(tmp_path / "e"), "--days", "0"]) == 2

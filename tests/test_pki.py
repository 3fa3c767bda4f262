"""The IKEv2 root CA and server certificate: what clients check, and what openssl says."""

import ipaddress
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from puqvpn.db import connect
from puqvpn.services import pki


@pytest.fixture
def db(tmp_path):
    database = connect(tmp_path / "pki.sqlite3")
    yield database
    database.conn.close()


def parse(pem):
    return x509.load_pem_x509_certificate(pem.encode())


def openssl_verify(tmp_path, ca_pem, cert_pem):
    (tmp_path / "ca.pem").write_text(ca_pem)
    (tmp_path / "cert.pem").write_text(cert_pem)
    return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
                           str(tmp_path / "cert.pem")], capture_output=True, text=True)


def test_ca_has_the_name_parts_in_their_own_attributes_and_ca_extensions(db):
    row = pki.generate_ca(db, "Example VPN CA", "Example Ltd", country="de", state="Bavaria",
                          locality="Munich", unit="Ops")
    cert = parse(row["cert_pem"])
    subject = {attr.oid: attr.value for attr in cert.subject}
    assert subject == {
        NameOID.COMMON_NAME: "Example VPN CA",
        NameOID.ORGANIZATION_NAME: "Example Ltd",
        NameOID.COUNTRY_NAME: "DE",
        NameOID.STATE_OR_PROVINCE_NAME: "Bavaria",
        NameOID.LOCALITY_NAME: "Munich",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "Ops",
    }
    assert NameOID.SURNAME not in subject
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert pki.key_description(cert) == "RSA 3072"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3650 <= lifetime.days <= 3652


def test_optional_name_parts_are_left_out_when_empty(db):
    cert = parse(pki.generate_ca(db, "Only CN", "Org", key_type="ecdsa-p256")["cert_pem"])
    assert [attr.oid for attr in cert.subject] == [NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]
    assert pki.key_description(cert) == "ECDSA secp256r1"


@pytest.mark.parametrize("fields, bad", [
    ({"common_name": "", "organization": "Org"}, "common_name"),
    ({"common_name": "CA", "organization": ""}, "organization"),
    ({"common_name": "CA", "organization": "Org", "country": "DEU"}, "country"),
    ({"common_name": "CA", "organization": "Org", "country": "1x"}, "country"),
    ({"common_name": "CA\nX", "organization": "Org"}, "common_name"),
    ({"common_name": "CA", "organization": "Org", "state": "By\x00"}, "state"),
    ({"common_name": "CA", "organization": "Org", "key_type": "dsa"}, "key_type"),
])
def test_bad_ca_details_are_refused_and_nothing_is_stored(db, fields, bad):
    with pytest.raises(pki.CertificateError) as error:
        pki.generate_ca(db, **fields)
    assert bad in error.value.fields
    assert pki.get(db, "ca") is None


@pytest.mark.parametrize("key_type, expected", [
    ("rsa3072", "RSA 3072"), ("ecdsa-p256", "ECDSA secp256r1"), ("ecdsa-p384", "ECDSA secp384r1"),
])
def test_server_certificate_verifies_and_carries_what_clients_require(db, tmp_path, key_type, expected):
    ca = pki.generate_ca(db, "Test CA", "Test Org", key_type=key_type)
    server = pki.generate_server(db, "VPN.Example.com", "203.0.113.7", "2001:db8::7")
    result = openssl_verify(tmp_path, ca["cert_pem"], server["cert_pem"])
    assert result.returncode == 0, result.stdout + result.stderr

    cert = parse(server["cert_pem"])
    assert pki.key_description(cert) == expected
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vpn.example.com"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # every IP twice: as an IP entry and as a DNS-type entry (Windows error 13801)
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.com", "203.0.113.7", "2001:db8::7"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("203.0.113.7"),
                                                       ipaddress.ip_address("2001:db8::7")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, pki.IKE_INTERMEDIATE]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # a day back for clients whose clock is behind; five years ahead
    assert (parse(ca["cert_pem"]).not_valid_after_utc - cert.not_valid_after_utc).days > 1500
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 5 * 365 + 1 <= lifetime.days <= 5 * 365 + 2
    assert pki.signed_by(server["cert_pem"], ca["cert_pem"])
    assert pki.server_identity(db) == "vpn.example.com"
    assert pki.ready(db)


def test_openssl_checks_the_server_certificate_purpose(db, tmp_path):
    ca = pki.generate_ca(db, "Test CA", "Test Org", key_type="ecdsa-p256")
    server = pki.generate_server(db, "vpn.example.com", "198.51.100.1")
    (tmp_path / "ca.pem").write_text(ca["cert_pem"])
    (tmp_path / "server.pem").write_text(server["cert_pem"])
    result = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(tmp_path / "ca.pem"),
                             str(tmp_path / "server.pem")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "server.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:198.51.100.1" in text and "DNS:198.51.100.1" in text
    assert "TLS Web Server Authentication, 1.3.6.1.5.5.8.2.2" in text


@pytest.mark.parametrize("domain, ipv4, ipv6, bad", [
    ("", "203.0.113.7", None, "domain"),
    ("203.0.113.7", "203.0.113.7", None, "domain"),
    ("vpn", "203.0.113.7", None, "domain"),
    ("vpn.exa mple.com", "203.0.113.7", None, "domain"),
    ("vpn.example.com\nDNS:evil", "203.0.113.7", None, "domain"),
    ("*.example.com", "203.0.113.7", None, "domain"),
    ("vpn.example.com", "203.0.113.700", None, "ipv4"),
    ("vpn.example.com", "2001:db8::1", None, "ipv4"),
    ("vpn.example.com", "203.0.113.7", "203.0.113.8", "ipv6"),
])
def test_bad_server_inputs_are_refused_and_the_old_certificate_is_kept(db, domain, ipv4, ipv6, bad):
    pki.generate_ca(db, "Test CA", "Test Org", key_type="ecdsa-p256")
    old = pki.generate_server(db, "vpn.example.com", "203.0.113.7")
    with pytest.raises(pki.CertificateError) as error:
        pki.generate_server(db, domain, ipv4, ipv6)
    assert bad in error.value.fields
    assert pki.get(db, "server")["cert_pem"] == old["cert_pem"]


def test_server_certificate_needs_a_ca(db):
    with pytest.raises(pki.CertificateError, match="CA first"):
        pki.generate_server(db, "vpn.example.com", "203.0.113.7")


def test_import_accepts_a_matching_ca_and_refuses_the_rest(db):
    cert_pem, key_pem = pki.build_ca("Imported CA", "Elsewhere", key_type="ecdsa-p256")
    other_cert, other_key = pki.build_ca("Other CA", "Elsewhere", key_type="ecdsa-p256")
    leaf_cert, leaf_key = pki.build_server(cert_pem, key_pem, "vpn.example.com", "203.0.113.7")

    with pytest.raises(pki.CertificateError, match="does not belong"):
        pki.import_ca(db, cert_pem, other_key)
    with pytest.raises(pki.CertificateError, match="not a CA"):
        pki.import_ca(db, leaf_cert, leaf_key)
    with pytest.raises(pki.CertificateError, match="not an X.509"):
        pki.import_ca(db, "garbage", key_pem)
    with pytest.raises(pki.CertificateError, match="not a private key"):
        pki.import_ca(db, cert_pem, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert pki.get(db, "ca") is None

    row = pki.import_ca(db, cert_pem, key_pem)
    assert pki.cert_info(row["cert_pem"])["common_name"] == "Imported CA"
    # DER is accepted too
    der = pki.to_der(other_cert)
    assert pki.import_ca(db, der, other_key)["cert_pem"] == other_cert


def test_a_new_ca_removes_the_server_certificate_it_did_not_sign(db):
    pki.generate_ca(db, "First CA", "Org", key_type="ecdsa-p256")
    pki.generate_server(db, "vpn.example.com", "203.0.113.7")
    pki.generate_ca(db, "Second CA", "Org", key_type="ecdsa-p256")
    assert pki.get(db, "server") is None
    assert not pki.ready(db)


def test_der_export_and_display_information(db):
    ca = pki.generate_ca(db, "Test CA", "Test Org", key_type="ecdsa-p256")
    server = pki.generate_server(db, "vpn.example.com", "203.0.113.7")
    der = pki.to_der(ca["cert_pem"])
    assert x509.load_der_x509_certificate(der) == parse(ca["cert_pem"])
    info = pki.cert_info(server["cert_pem"])
    assert info["subject"] == "CN=vpn.example.com"
    assert info["issuer"] == "CN=Test CA,O=Test Org"
    assert info["san_dns"] == ["vpn.example.com", "203.0.113.7"]
    assert info["san_ips"] == ["203.0.113.7"]
    assert info["eku"] == ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.8.2.2"]
    assert not info["expired"]
    fingerprint = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
                                 input=server["cert_pem"], capture_output=True, text=True).stdout
    assert fingerprint.strip().split("=", 1)[1] == info["sha256"]


def test_delete(db):
    pki.generate_ca(db, "Test CA", "Test Org", key_type="ecdsa-p256")
    pki.generate_server(db, "vpn.example.com", "203.0.113.7")
    pki.delete(db, "server")
    assert pki.get(db, "server") is None and pki.get(db, "ca") is not None


pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")

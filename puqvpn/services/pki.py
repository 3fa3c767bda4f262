"""The IKEv2 certificates: a root CA and the server certificate it signs.

Both live in the ``certificates`` table (kind 'ca' or 'server') as PEM.  The
server certificate is what Windows, macOS, iOS and Android check, so its
extensions follow what each of them insists on:

- SAN: the DNS name, and every IP both as an IP entry and as a DNS-type entry
  (Windows rejects an IP-only server with error 13801 otherwise);
- EKU: serverAuth plus 1.3.6.1.5.5.8.2.2 (IKE intermediate, older macOS);
- KU: digitalSignature and keyEncipherment.
"""

import datetime
import ipaddress
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from .validation import ValidationError

IKE_INTERMEDIATE = ObjectIdentifier("1.3.6.1.5.5.8.2.2")
KEY_TYPES = {
    "rsa3072": "RSA 3072",
    "rsa4096": "RSA 4096",
    "ecdsa-p256": "ECDSA P-256",
    "ecdsa-p384": "ECDSA P-384",
}
CA_DAYS = 3650
SERVER_DAYS = 5 * 365
SKEW = datetime.timedelta(days=1)

_HOSTNAME_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CertificateError(ValidationError):
    """Bad input or an unusable certificate; ``fields`` maps a form field to its message."""

    def __init__(self, message, fields=None):
        self.fields = dict(fields or {})
        ValueError.__init__(self, message)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


# --- validation -----------------------------------------------------------

def _text(fields, name, value, required, max_length=64):
    value = (value or "").strip()
    if not value:
        if required:
            fields[name] = "Required."
        return None
    if _CONTROL.search(value):
        fields[name] = "Control characters are not allowed."
    elif len(value) > max_length:
        fields[name] = f"At most {max_length} characters."
    return value


def validate_domain(value):
    """A DNS host name (no IP address, no wildcard); returns it lower-cased."""
    value = (value or "").strip().rstrip(".").lower()
    if not value:
        raise CertificateError("The server's domain is required.", {"domain": "Required."})
    labels = value.split(".")
    try:
        ipaddress.ip_address(value)
        is_ip = True
    except ValueError:
        is_ip = False
    if (is_ip or len(value) > 253 or len(labels) < 2
            or not all(_HOSTNAME_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise CertificateError(f"{value!r} is not a valid domain name.",
                               {"domain": "Enter a host name such as vpn.example.com."})
    return value


def validate_ip(value, version, field):
    value = (value or "").strip()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise CertificateError(f"{value!r} is not an IPv{version} address.",
                               {field: f"Enter an IPv{version} address."})
    return address


# --- generation -----------------------------------------------------------

def _new_key(key_type):
    if key_type == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise CertificateError(f"Unknown key type {key_type!r}.",
                           {"key_type": "Choose one of " + ", ".join(KEY_TYPES.values()) + "."})


def _hash_for(key):
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def build_ca(common_name, organization, country=None, state=None, locality=None,
             unit=None, key_type="rsa3072"):
    """A self-signed root CA; returns (cert_pem, key_pem).  Nothing is stored."""
    fields = {}
    common_name = _text(fields, "common_name", common_name, True)
    organization = _text(fields, "organization", organization, True)
    country = _text(fields, "country", country, False, 64)
    state = _text(fields, "state", state, False, 128)
    locality = _text(fields, "locality", locality, False, 128)
    unit = _text(fields, "unit", unit, False)
    if country and not re.fullmatch(r"[A-Za-z]{2}", country):
        fields["country"] = "Two letters, e.g. DE."
    if key_type not in KEY_TYPES:
        fields["key_type"] = "Choose one of " + ", ".join(KEY_TYPES.values()) + "."
    if fields:
        raise CertificateError("The CA details are not valid.", fields)

    attributes = []
    # each part of the name in its own attribute, in the usual order
    for oid, value in ((NameOID.COUNTRY_NAME, country and country.upper()),
                       (NameOID.STATE_OR_PROVINCE_NAME, state),
                       (NameOID.LOCALITY_NAME, locality),
                       (NameOID.ORGANIZATION_NAME, organization),
                       (NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                       (NameOID.COMMON_NAME, common_name)):
        if value:
            attributes.append(x509.NameAttribute(oid, value))
    name = x509.Name(attributes)
    key = _new_key(key_type)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def build_server(ca_cert_pem, ca_key_pem, domain, ipv4, ipv6=None, key_type=None):
    """A server certificate signed by the CA; returns (cert_pem, key_pem).

    The key type follows the CA's unless given.
    """
    domain = validate_domain(domain)
    addresses = [validate_ip(ipv4, 4, "ipv4")]
    if ipv6 and ipv6.strip():
        addresses.append(validate_ip(ipv6, 6, "ipv6"))
    ca_cert = load_cert(ca_cert_pem)
    ca_key = load_key(ca_key_pem)
    if key_type is None:
        public = ca_cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            key_type = "ecdsa-p384" if public.curve.key_size >= 384 else "ecdsa-p256"
        else:
            key_type = "rsa3072"
    key = _new_key(key_type)
    # IP entries, and the same IPs as DNS-type entries for Windows
    san = [x509.DNSName(domain)]
    san += [x509.IPAddress(address) for address in addresses]
    san += [x509.DNSName(str(address)) for address in addresses]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, IKE_INTERMEDIATE]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                       critical=False)
        .sign(ca_key, _hash_for(ca_key))
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


# --- parsing and checks ---------------------------------------------------

def load_cert(data):
    """A certificate from PEM or DER (str or bytes)."""
    raw = data.encode() if isinstance(data, str) else bytes(data or b"")
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise CertificateError("This is not an X.509 certificate (PEM or DER).",
                               {"cert": "Not a certificate."}) from None


def load_key(data):
    raw = data.encode() if isinstance(data, str) else bytes(data or b"")
    try:
        if b"-----BEGIN" in raw:
            key = serialization.load_pem_private_key(raw, password=None)
        else:
            key = serialization.load_der_private_key(raw, password=None)
    except TypeError:
        raise CertificateError("The private key is encrypted; upload it without a passphrase.",
                               {"key": "Encrypted keys are not supported."}) from None
    except ValueError:
        raise CertificateError("This is not a private key (PEM or DER).",
                               {"key": "Not a private key."}) from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertificateError("Only RSA and ECDSA keys are supported.",
                               {"key": "Use an RSA or ECDSA key."})
    return key


def _same_public_key(a, b):
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def check_ca(cert_pem, key_pem):
    """Raise CertificateError unless the pair is a usable CA; returns normalised PEMs."""
    cert = load_cert(cert_pem)
    key = load_key(key_pem)
    if not _same_public_key(cert.public_key(), key.public_key()):
        raise CertificateError("The private key does not belong to this certificate.",
                               {"key": "This key does not match the certificate."})
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertificateError("This certificate is not a CA (basicConstraints CA:TRUE is missing).",
                               {"cert": "Not a CA certificate."})
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise CertificateError("This CA may not sign certificates (keyCertSign is missing).",
                                   {"cert": "keyCertSign is missing."})
    except x509.ExtensionNotFound:
        pass
    if cert.not_valid_after_utc <= _now():
        raise CertificateError("This CA certificate has expired.", {"cert": "Expired."})
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def signed_by(cert_pem, ca_cert_pem):
    """True when the certificate's signature verifies with the CA's public key."""
    cert, ca = load_cert(cert_pem), load_cert(ca_cert_pem)
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
        else:
            public.verify(cert.signature, cert.tbs_certificate_bytes,
                          ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def to_der(cert_pem):
    return load_cert(cert_pem).public_bytes(serialization.Encoding.DER)


def key_description(key_or_cert):
    key = key_or_cert.public_key() if isinstance(key_or_cert, x509.Certificate) else key_or_cert
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    return f"ECDSA {key.curve.name}"


def cert_info(cert_pem):
    """What the certificates page shows about one certificate."""
    cert = load_cert(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        eku = [oid.dotted_string for oid in
               cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = []
    fingerprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "common_name": _first(cert.subject, NameOID.COMMON_NAME),
        "san_dns": dns,
        "san_ips": ips,
        "eku": eku,
        "key": key_description(cert),
        "serial": format(cert.serial_number, "X"),
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "expired": cert.not_valid_after_utc <= _now(),
        "sha256": ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2)),
    }


def _first(name, oid):
    values = name.get_attributes_for_oid(oid)
    return values[0].value if values else ""


# --- the certificates table ----------------------------------------------

def get(db, kind):
    """The row {kind, cert_pem, key_pem, created_at} or None."""
    rows = list(db.query("SELECT * FROM certificates WHERE kind = ?", [kind]))
    return rows[0] if rows else None


def ready(db):
    """True when both the CA and the server certificate exist (IKEv2 may be switched on)."""
    return get(db, "ca") is not None and get(db, "server") is not None


def _write(db, sql, params):
    """One statement in its own transaction, or inside the caller's."""
    conn = db.conn
    if conn.in_transaction:
        conn.execute(sql, params)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(sql, params)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _store(db, kind, cert_pem, key_pem):
    _write(db, 
           "INSERT INTO certificates (kind, cert_pem, key_pem, created_at) VALUES (?, ?, ?, ?) "
           "ON CONFLICT(kind) DO UPDATE SET cert_pem = excluded.cert_pem, "
           "key_pem = excluded.key_pem, created_at = excluded.created_at",
           [kind, cert_pem, key_pem, _now().strftime("%Y-%m-%dT%H:%M:%SZ")])
    return get(db, kind)


def generate_ca(db, common_name, organization, country=None, state=None, locality=None,
                unit=None, key_type="rsa3072"):
    """Make and store a new root CA.  The old server certificate no longer chains, so it goes."""
    cert_pem, key_pem = build_ca(common_name, organization, country, state, locality, unit, key_type)
    row = _store(db, "ca", cert_pem, key_pem)
    _drop_unchained_server(db, cert_pem)
    return row


def import_ca(db, cert_pem, key_pem):
    cert_pem, key_pem = check_ca(cert_pem, key_pem)
    row = _store(db, "ca", cert_pem, key_pem)
    _drop_unchained_server(db, cert_pem)
    return row


def _drop_unchained_server(db, ca_pem):
    server = get(db, "server")
    if server and not signed_by(server["cert_pem"], ca_pem):
        delete(db, "server")


def generate_server(db, domain, ipv4, ipv6=None):
    ca = get(db, "ca")
    if ca is None:
        raise CertificateError("Generate or import the root CA first.")
    cert_pem, key_pem = build_server(ca["cert_pem"], ca["key_pem"], domain, ipv4, ipv6)
    return _store(db, "server", cert_pem, key_pem)


def delete(db, kind):
    _write(db, "DELETE FROM certificates WHERE kind = ?", [kind])


def server_identity(db):
    """The IKE identity clients expect: the server certificate's DNS name, or None."""
    server = get(db, "server")
    if server is None:
        return None
    info = cert_info(server["cert_pem"])
    return info["common_name"] or (info["san_dns"][0] if info["san_dns"] else None)

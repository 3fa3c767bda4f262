"""HTTPS for the panel: the TLS front over real loopback sockets, with a self-signed certificate."""

import datetime
import http.client
import ipaddress
import json
import re
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import jsonify, request

from puqvpn import create_app
from puqvpn.services import users
from puqvpn.db import connect
from puqvpn.tls import parse_head, BadRequest, start_tls
from puqvpn.views.auth import public


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def https(tmp_path):
    """The panel served over HTTPS on an ephemeral loopback port; yields (front, client SSL context)."""
    cert, key = self_signed(tmp_path)
    app = create_app(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                     TLS_CERT=str(cert), TLS_KEY=str(key))

    @public
    def whoami():
        return jsonify(remote_addr=request.remote_addr, secure=request.is_secure, scheme=request.scheme,
                       forwarded=request.headers.get("X-Forwarded-For"))
    app.add_url_rule("/whoami-test", "whoami_test", whoami)

    db = connect(app.config["PUQVPN"]["DATABASE"])
    users.create_user(db, "admin", "correct horse battery", "admin")
    db.conn.close()
    front = start_tls(app, "127.0.0.1", 0, str(cert), str(key), threads=4)
    context = ssl.create_default_context(cafile=str(cert))
    yield front, context
    front.close()


def get(front, context, path, headers=None, method="GET", body=None):
    connection = http.client.HTTPSConnection("127.0.0.1", front.port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def raw_exchange(front, context, payload, read_until=None):
    """Send raw bytes over TLS and read until the server closes (or ``read_until`` is seen)."""
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(payload)
            received = b""
            while read_until is None or received.count(read_until[0]) < read_until[1]:
                data = tls.recv(65536)
                if not data:
                    break
                received += data
            return received


def test_the_app_sees_the_real_client_and_a_secure_request(https):
    response, body = get(*https, "/whoami-test")
    assert response.status == 200
    seen = json.loads(body)
    assert seen == {"remote_addr": "127.0.0.1", "secure": True, "scheme": "https", "forwarded": "127.0.0.1"}


def test_a_spoofed_forwarded_for_is_ignored(https):
    response, body = get(*https, "/whoami-test", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http", "Forwarded": "for=203.0.113.9",
        "X-Real-IP": "203.0.113.9"})
    seen = json.loads(body)
    assert seen["remote_addr"] == "127.0.0.1" and seen["secure"] is True
    assert seen["forwarded"] == "127.0.0.1"


def test_every_response_carries_hsts_and_the_other_security_headers(https):
    response, _body = get(*https, "/auth/login")
    assert response.status == 200
    assert response.getheader("Strict-Transport-Security").startswith("max-age=")
    assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy")
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def test_logging_in_over_https_sets_a_secure_session_cookie(https):
    front, context = https
    connection = http.client.HTTPSConnection("127.0.0.1", front.port, context=context, timeout=10)
    connection.request("GET", "/auth/login")
    response = connection.getresponse()
    page = response.read().decode()
    cookie = response.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    # Same connection (keep-alive); a browser sends the Referer under the same-origin policy.
    form = f"username=admin&password=correct+horse+battery&csrf_token={token}"
    connection.request("POST", "/auth/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
        "Referer": f"https://127.0.0.1:{front.port}/auth/login"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 302
    set_cookie = response.getheader("Set-Cookie")
    assert "puqvpn_session=" in set_cookie and "Secure" in set_cookie and "HttpOnly" in set_cookie


def test_pipelined_requests_are_answered_in_order(https):
    front, context = https
    request_ = b"GET /whoami-test HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    received = raw_exchange(front, context, request_ * 3 + last)
    assert received.count(b"HTTP/1.1 200") == 4
    assert received.index(b'"remote_addr"') < received.index(b"<title>Log in")


def test_a_chunked_request_body_is_refused_with_411(https):
    front, context = https
    received = raw_exchange(front, context, b"POST /whoami-test HTTP/1.1\r\nHost: x\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 411")


def test_a_refused_request_still_gets_the_earlier_pipelined_answers_first(https):
    front, context = https
    received = raw_exchange(front, context, b"GET /whoami-test HTTP/1.1\r\nHost: x\r\n\r\n"
                                            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400 Bad Request" in received


def test_an_oversized_request_head_is_refused(https):
    front, context = https
    received = raw_exchange(front, context, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 431")


def test_plain_http_on_the_https_port_gets_a_clear_answer(https):
    front, _context = https
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTPS only" in raw.recv(4096)


def test_a_request_body_reaches_the_app_intact(https):
    front, context = https
    body = "username=nobody&password=" + "x" * 200_000
    response, _page = get(front, context, "/auth/login", method="POST", body=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    # Reached the app: the CSRF check answered, not the front.
    assert response.status == 400


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\n folded\r\n\r\n", "400"),
    (b"GET /\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nX Y: z\r\n\r\n", "400"),
])
def test_malformed_heads_are_refused(head, status):
    with pytest.raises(BadRequest) as refused:
        parse_head(head, "192.0.2.1")
    assert refused.value.status.startswith(status)


def test_the_forwarded_head_names_the_real_peer_once():
    forwarded, length = parse_head(b"POST /x HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 1.2.3.4\r\n"
                                   b"X-FORWARDED-PROTO: http\r\nContent-Length: 3\r\n\r\n", "192.0.2.1")
    assert length == 3
    assert forwarded.lower().count(b"x-forwarded-for") == 1
    assert b"X-Forwarded-For: 192.0.2.1\r\n" in forwarded and b"1.2.3.4" not in forwarded
    assert b"X-Forwarded-Proto: https\r\n" in forwarded


def test_the_address_allow_list_sees_the_real_client_behind_the_front(tmp_path):
    # Only 192.0.2.0/24 may use the panel; a loopback client claiming to be 192.0.2.5 is still refused.
    cert, key = self_signed(tmp_path)
    app = create_app(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                     TLS_CERT=str(cert), TLS_KEY=str(key), ALLOWED_WEB_IPS="192.0.2.0/24")
    front = start_tls(app, "127.0.0.1", 0, str(cert), str(key), threads=2)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        response, _body = get(front, context, "/auth/login", headers={"X-Forwarded-For": "192.0.2.5"})
        assert response.status == 403
    finally:
        front.close()
    allowed = create_app(INSTANCE_DIR=str(tmp_path / "other"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                         TLS_CERT=str(cert), TLS_KEY=str(key), ALLOWED_WEB_IPS="127.0.0.0/8")
    front = start_tls(allowed, "127.0.0.1", 0, str(cert), str(key), threads=2)
    try:
        response, _body = get(front, ssl.create_default_context(cafile=str(cert)), "/auth/login")
        assert response.status == 200
    finally:
        front.close()

"""Two-factor login: enrolment by QR code, login with a code, recovery codes, and the setting that requires it."""

import base64
import re
import time

import pyotp
import pytest

from puqvpn.db import connect
from puqvpn.services import totp, users

from .conftest import csrf_token
from .routes import make_app

PASSWORD = "correct horse battery"


class Clock:
    """The time the panel's TOTP check sees; ``advance()`` moves to the next 30 s step."""

    def __init__(self):
        self.offset = 0

    def now(self):
        return time.time() + self.offset

    def advance(self, seconds=30):
        self.offset += seconds

    def code(self, secret):
        return pyotp.TOTP(secret).at(self.now())


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("puqvpn.services.totp._now", clock.now)
    return clock


@pytest.fixture
def panel(tmp_path, clock):
    app = make_app(tmp_path)
    db = connect(app.config["PUQVPN"]["DATABASE"])
    users.create_user(db, "alice", PASSWORD, "operator")
    yield app, db
    db.conn.close()


def log_in(client, username="alice", password=PASSWORD):
    return client.post("/auth/login", data={"username": username, "password": password,
                                            "csrf_token": csrf_token(client)})


def second_step(client, code):
    return client.post("/auth/2fa", data={"code": code, "csrf_token": csrf_token(client, "/auth/2fa")})


def enrol(client):
    """Set up 2FA the way a person would: read the key off the page, type the app's code."""
    page = client.get("/auth/2fa/setup").get_data(as_text=True)
    secret = re.search(r"<code>([A-Z2-7]+)</code>", page).group(1)
    response = client.post("/auth/2fa/setup", data={"action": "enable", "code": pyotp.TOTP(secret).at(time.time()),
                                                    "csrf_token": csrf_token(client, "/auth/2fa/setup")})
    assert response.status_code == 200
    codes = re.findall(r"\b[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}\b", response.get_data(as_text=True))
    return secret, codes


def test_enrolment_shows_a_qr_code_of_the_provisioning_uri(panel):
    app, _db = panel
    client = app.test_client()
    log_in(client)
    page = client.get("/auth/2fa/setup").get_data(as_text=True)
    # The QR is part of the page, so no second request can miss the session's secret.
    image = re.search(r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(image.group(1)).startswith(b"<svg")
    secret = re.search(r"<code>([A-Z2-7]+)</code>", page).group(1)
    assert pyotp.parse_uri(totp.provisioning_uri(secret, "alice")).secret == secret


def test_a_wrong_code_does_not_turn_2fa_on(panel):
    app, db = panel
    client = app.test_client()
    log_in(client)
    client.get("/auth/2fa/setup")
    response = client.post("/auth/2fa/setup", data={"action": "enable", "code": "000000",
                                                    "csrf_token": csrf_token(client, "/auth/2fa/setup")})
    assert response.status_code == 422 and b"does not match" in response.data
    assert users.get(db, "alice")["totp_secret"] is None


def test_login_with_2fa_needs_the_code_after_the_password(panel, clock):
    app, db = panel
    client = app.test_client()
    log_in(client)
    secret, codes = enrol(client)
    assert len(codes) == 10 and users.get(db, "alice")["totp_secret"] == secret

    fresh = app.test_client()
    response = log_in(fresh)
    assert response.status_code == 302 and response.headers["Location"].endswith("/auth/2fa")
    # The password alone is not a login.
    assert fresh.get("/clients/").status_code == 302
    assert second_step(fresh, "123456").status_code == 401
    clock.advance()
    response = second_step(fresh, clock.code(secret))
    assert response.status_code == 302
    assert fresh.get("/clients/").status_code == 200


def test_a_code_works_only_once(panel, clock):
    app, _db = panel
    client = app.test_client()
    log_in(client)
    secret, _codes = enrol(client)
    clock.advance()
    code = clock.code(secret)
    first, second = app.test_client(), app.test_client()
    log_in(first), log_in(second)
    assert second_step(first, code).status_code == 302
    assert second_step(second, code).status_code == 401
    # Nor an older one that is still within the drift allowance.
    assert second_step(second, pyotp.TOTP(secret).at(clock.now() - 30)).status_code == 401
    clock.advance()
    assert second_step(second, clock.code(secret)).status_code == 302


def test_recovery_codes_log_in_once_each(panel):
    app, db = panel
    client = app.test_client()
    log_in(client)
    _secret, codes = enrol(client)
    stored = users.get(db, "alice")["recovery_codes"]
    assert all(code not in stored for code in codes), "recovery codes are stored only as hashes"

    first = app.test_client()
    log_in(first)
    response = second_step(first, codes[0].upper())    # typed in capitals: still fine
    assert response.status_code == 302
    assert b"recovery code; 9 left" in first.get("/").data

    again = app.test_client()
    log_in(again)
    assert second_step(again, codes[0]).status_code == 401
    assert second_step(again, codes[1]).status_code == 302
    assert totp.recovery_codes_left(users.get(db, "alice")) == 8


def test_new_recovery_codes_replace_the_old_ones(panel):
    app, db = panel
    client = app.test_client()
    log_in(client)
    secret, old_codes = enrol(client)
    response = client.post("/auth/2fa/setup", data={"action": "recovery", "password": PASSWORD,
                                                    "csrf_token": csrf_token(client, "/auth/2fa/setup")})
    new_codes = re.findall(r"\b[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}\b", response.get_data(as_text=True))
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    user = users.get(db, "alice")
    assert not totp.use_recovery_code(db, user["id"], old_codes[0])
    assert totp.use_recovery_code(db, user["id"], new_codes[0])


def test_turning_2fa_off_needs_the_password(panel):
    app, db = panel
    client = app.test_client()
    log_in(client)
    enrol(client)
    token = csrf_token(client, "/auth/2fa/setup")
    refused = client.post("/auth/2fa/setup", data={"action": "disable", "password": "wrong", "csrf_token": token})
    assert refused.status_code == 422 and users.get(db, "alice")["totp_secret"]
    client.post("/auth/2fa/setup", data={"action": "disable", "password": PASSWORD, "csrf_token": token})
    assert users.get(db, "alice")["totp_secret"] is None


def test_the_second_step_expires(panel, clock, monkeypatch):
    app, _db = panel
    client = app.test_client()
    log_in(client)
    secret, _codes = enrol(client)
    late = app.test_client()
    log_in(late)
    token = csrf_token(late, "/auth/2fa")
    real_time = time.time
    monkeypatch.setattr("puqvpn.views.auth.time", type("Later", (), {"time": lambda: real_time() + 301}))
    clock.advance()
    response = late.post("/auth/2fa", data={"code": clock.code(secret), "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"].endswith("/auth/login")
    assert late.get("/clients/").status_code == 302


def test_require_2fa_sends_everyone_to_enrolment_first(tmp_path, clock):
    app = make_app(tmp_path, REQUIRE_2FA="1")
    db = connect(app.config["PUQVPN"]["DATABASE"])
    users.create_user(db, "alice", PASSWORD, "admin")
    client = app.test_client()
    log_in(client)
    for page in ("/", "/clients/", "/accounts/"):
        response = client.get(page)
        assert response.status_code == 302 and response.headers["Location"].endswith("/auth/2fa/setup")
    setup = client.get("/auth/2fa/setup").get_data(as_text=True)
    assert "requires two-factor login" in setup
    _secret, codes = enrol(client)
    assert len(codes) == 10
    assert client.get("/clients/").status_code == 200
    # Once set up, it cannot be turned off while the setting is on.
    client.post("/auth/2fa/setup", data={"action": "disable", "password": PASSWORD,
                                         "csrf_token": csrf_token(client, "/auth/2fa/setup")})
    assert users.get(db, "alice")["totp_secret"]
    db.conn.close()


def test_an_admin_can_reset_a_lost_second_factor(panel):
    app, db = panel
    users.create_user(db, "root", PASSWORD, "admin")
    alice_client = app.test_client()
    log_in(alice_client)
    enrol(alice_client)
    admin = app.test_client()
    log_in(admin, "root")
    alice = users.get(db, "alice")
    admin.post(f"/accounts/{alice['id']}/second-factor", data={"csrf_token": csrf_token(admin, "/accounts/")})
    assert users.get(db, "alice")["totp_secret"] is None
    # Her sessions ended with it.
    assert alice_client.get("/clients/").status_code == 302

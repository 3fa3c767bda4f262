"""Login throttling and lockout, idle session expiry, and sessions ended by a password change."""

import datetime

import itsdangerous.timed
import pytest

from puqvpn.db import connect
from puqvpn.services import throttle, users

from .conftest import csrf_token
from .routes import make_app

PASSWORD = "correct horse battery"


@pytest.fixture
def panel(tmp_path):
    app = make_app(tmp_path)
    db = connect(app.config["PUQVPN"]["DATABASE"])
    users.create_user(db, "alice", PASSWORD, "admin")
    yield app, db
    db.conn.close()


def attempt(client, username, password, address="192.0.2.10"):
    token = csrf_token(client)
    return client.post("/auth/login", data={"username": username, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def test_an_account_locks_after_repeated_failures_even_with_the_right_password(panel):
    app, _db = panel
    client = app.test_client()
    for _ in range(throttle.ACCOUNT_LIMIT):
        response = attempt(client, "alice", "wrong password!")
        assert response.status_code == 401 and b"Wrong username or password." in response.data
    locked = attempt(client, "alice", PASSWORD)
    assert locked.status_code == 429
    assert b"Too many failed logins. Try again in 15 minutes." in locked.data
    assert client.get("/").status_code == 302
    # The lock is on the account: another address is refused too.
    assert attempt(app.test_client(), "alice", PASSWORD, address="198.51.100.7").status_code == 429


def test_an_unknown_username_locks_the_same_way(panel):
    # Otherwise the lockout would tell which usernames exist.
    app, _db = panel
    client = app.test_client()
    answers = [attempt(client, "nobody", "wrong password!") for _ in range(throttle.ACCOUNT_LIMIT + 1)]
    assert [a.status_code for a in answers] == [401] * throttle.ACCOUNT_LIMIT + [429]
    assert b"Too many failed logins" in answers[-1].data


def test_one_address_trying_many_usernames_is_locked(panel, monkeypatch):
    app, _db = panel
    monkeypatch.setattr(throttle, "IP_LIMIT", 8)
    client = app.test_client()
    for number in range(8):
        assert attempt(client, f"guess{number}", "wrong password!", "203.0.113.5").status_code == 401
    assert attempt(client, "alice", PASSWORD, "203.0.113.5").status_code == 429
    # Alice herself, elsewhere, is not affected.
    assert attempt(app.test_client(), "alice", PASSWORD, "192.0.2.44").status_code == 302


def test_the_lock_lifts_after_the_window(panel):
    app, db = panel
    client = app.test_client()
    for _ in range(throttle.ACCOUNT_LIMIT):
        attempt(client, "alice", "wrong password!")
    now = datetime.datetime.now(datetime.timezone.utc)
    until = throttle.locked_until(db, "192.0.2.10", "alice", now)
    assert now + datetime.timedelta(minutes=14) < until <= now + throttle.WINDOW + datetime.timedelta(seconds=1)
    assert throttle.locked_until(db, "192.0.2.10", "alice", until + datetime.timedelta(seconds=1)) is None


def test_attempts_while_locked_do_not_extend_the_lock(panel):
    app, db = panel
    client = app.test_client()
    for _ in range(throttle.ACCOUNT_LIMIT):
        attempt(client, "alice", "wrong password!")
    first = throttle.locked_until(db, "192.0.2.10", "alice")
    for _ in range(5):
        assert attempt(client, "alice", "wrong password!").status_code == 429
    assert throttle.locked_until(db, "192.0.2.10", "alice") == first


def test_a_successful_login_starts_the_account_count_afresh(panel):
    app, _db = panel
    client = app.test_client()
    for _ in range(throttle.ACCOUNT_LIMIT - 1):
        attempt(client, "alice", "wrong password!")
    assert attempt(client, "alice", PASSWORD).status_code == 302
    other = app.test_client()
    for _ in range(throttle.ACCOUNT_LIMIT - 1):
        assert attempt(other, "alice", "wrong password!").status_code == 401
    assert attempt(other, "alice", PASSWORD).status_code == 302


def test_failed_logins_are_in_the_audit_log_with_the_address(panel):
    app, db = panel
    attempt(app.test_client(), "alice", "wrong password!", "192.0.2.77")
    row = dict(db.execute("SELECT * FROM audit_log WHERE action = 'auth.login' ORDER BY id DESC").fetchone())
    assert row["actor"] == "alice" and row["source_ip"] == "192.0.2.77" and row["outcome"] == "denied"
    assert "wrong password!" not in str(row)


@pytest.fixture
def later(monkeypatch):
    """Move the session cookie's clock forward by some minutes."""
    real = itsdangerous.timed.TimestampSigner.get_timestamp

    def move(minutes):
        monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp",
                            lambda self: real(self) + minutes * 60)
    return move


def test_an_idle_session_expires_after_the_timeout(tmp_path, later):
    app = make_app(tmp_path, SESSION_TIMEOUT_MINUTES="30")
    db = connect(app.config["PUQVPN"]["DATABASE"])
    users.create_user(db, "alice", PASSWORD, "admin")
    db.conn.close()
    client = app.test_client()
    assert attempt(client, "alice", PASSWORD).status_code == 302
    later(25)
    assert client.get("/clients/").status_code == 200     # in use: the cookie is renewed
    later(50)
    assert client.get("/clients/").status_code == 200     # 25 minutes after the last request
    later(81)
    response = client.get("/clients/")                    # 31 idle minutes
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_a_password_change_ends_every_session_of_that_account(panel):
    app, db = panel
    first, second = app.test_client(), app.test_client()
    attempt(first, "alice", PASSWORD)
    attempt(second, "alice", PASSWORD)
    assert second.get("/clients/").status_code == 200
    response = first.post("/auth/password", data={"current": PASSWORD, "new": "another long password",
                                                  "confirm": "another long password",
                                                  "csrf_token": csrf_token(first, "/auth/password")})
    assert response.status_code == 302
    assert first.get("/clients/").status_code == 302
    assert second.get("/clients/").status_code == 302
    # The old password is gone, the new one works.
    assert attempt(app.test_client(), "alice", PASSWORD).status_code == 401
    assert attempt(app.test_client(), "alice", "another long password").status_code == 302


def test_an_admin_password_reset_ends_the_sessions_too(panel):
    app, db = panel
    users.create_user(db, "bob", PASSWORD, "operator")
    bob = app.test_client()
    attempt(bob, "bob", PASSWORD)
    assert bob.get("/clients/").status_code == 200
    admin = app.test_client()
    attempt(admin, "alice", PASSWORD)
    page = admin.post(f"/accounts/{users.get(db, 'bob')['id']}/password",
                      data={"csrf_token": csrf_token(admin, "/accounts/")})
    assert b"It is shown only now" in page.data
    assert bob.get("/clients/").status_code == 302

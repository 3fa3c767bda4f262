"""Shared fixtures: an app on a temporary database, a logged-in test client, seed helpers."""

import re

import pytest

from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import clients, interfaces, users


@pytest.fixture
def app(tmp_path):
    """The panel on a fresh temporary database, kept off the live system."""
    app = create_app(
        INSTANCE_DIR=str(tmp_path / "instance"),
        SYSTEM_APPLY="0",
        BACKGROUND_JOBS="0",
        WG_CONF_DIR=str(tmp_path / "wireguard"),
        SWANCTL_DIR=str(tmp_path / "swanctl"),
        BACKUP_DIR=str(tmp_path / "backups"),
    )
    app.config["TESTING"] = True
    yield app


@pytest.fixture
def db(app):
    database = connect(app.config["PUQVPN"]["DATABASE"])
    yield database
    database.conn.close()


@pytest.fixture
def client(app):
    return app.test_client()


def csrf_token(client, path="/auth/login"):
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


class Auth:
    def __init__(self, client, db):
        self.client = client
        self.db = db

    def login(self, username="admin", password="correct horse battery", role="admin"):
        if users.get(self.db, username) is None:
            users.create_user(self.db, username, password, role)
        return self.attempt(username, password)

    def attempt(self, username, password):
        """Submit the login form as typed, without creating the account."""
        token = csrf_token(self.client)
        return self.client.post("/auth/login", data={"username": username, "password": password,
                                                      "csrf_token": token})

    def post(self, path, data=None, **kwargs):
        """POST a form with a valid CSRF token taken from the page the form lives on."""
        data = dict(data or {})
        data.setdefault("csrf_token", csrf_token(self.client, "/auth/password"))
        return self.client.post(path, data=data, **kwargs)


@pytest.fixture
def auth(client, db):
    return Auth(client, db)


@pytest.fixture
def logged_in(auth):
    auth.login()
    return auth


INTERFACE = {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820", "endpoint": "vpn.example.com",
             "dns": "1.1.1.1", "mtu": "1420", "keepalive": "25", "allowed_ips": "0.0.0.0/0, ::/0"}


@pytest.fixture
def wg0(db):
    return interfaces.create(db, dict(INTERFACE))


@pytest.fixture
def make_client(db, wg0):
    def make(name, **fields):
        return clients.create(db, {"interface": wg0["id"], "name": name, **fields})
    return make

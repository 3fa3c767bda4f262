"""API tokens: made in the panel or with `puqvpn token create`, shown once, revoked, checked."""

import datetime
import re

import pytest
from click.testing import CliRunner

from puqvpn import cli, settings as settings_module
from puqvpn.db import connect
from puqvpn.services import tokens
from puqvpn.services.validation import ValidationError


def test_tokens_are_long_random_and_distinct(db):
    made = {tokens.create(db, f"t{n}")[1] for n in range(20)}
    assert len(made) == 20
    assert all(token.startswith("pqv_") and len(token) >= 47 for token in made)


def test_token_fields_are_checked(db):
    with pytest.raises(ValidationError) as caught:
        tokens.create(db, "", role="root", allowed_ips="10.0.0.0/33", expires_at="2020-01-01")
    assert set(caught.value.fields) == {"name", "role", "allowed_ips", "expires_at"}
    tokens.create(db, "billing")
    with pytest.raises(ValidationError) as caught:
        tokens.create(db, "billing")
    assert "already exists" in caught.value.fields["name"]


def test_a_token_expires_after_its_last_day():
    today = datetime.date(2026, 12, 4)
    row = {"expires_at": "2026-12-04", "revoked_at": None}
    assert not tokens.is_expired(row, today)
    assert tokens.is_expired(row, today + datetime.timedelta(days=1))
    assert not tokens.is_expired({"expires_at": None}, today)


def test_authenticate_says_why_a_token_is_refused(db):
    row, token = tokens.create(db, "checked", allowed_ips="2001:db8::/32")
    assert tokens.authenticate(db, f"Bearer {token}", "2001:db8::5")["id"] == row["id"]
    assert tokens.authenticate(db, f"bearer  {token}", "2001:db8::5")["id"] == row["id"]
    cases = [(None, "::1", 401, "unauthorized"), (f"Token {token}", "2001:db8::5", 401, "unauthorized"),
             (f"Bearer {token}x", "2001:db8::5", 401, "invalid_token"),
             (f"Bearer {token}", "192.0.2.1", 403, "source_ip_not_allowed"),
             (f"Bearer {token}", "", 403, "source_ip_not_allowed")]
    for header, source, status, code in cases:
        with pytest.raises(tokens.TokenError) as caught:
            tokens.authenticate(db, header, source)
        assert (caught.value.status, caught.value.code) == (status, code), header


# ------------------------------------------------------------------ the admin page

def test_an_admin_creates_a_token_and_sees_it_exactly_once(logged_in, client, db):
    response = logged_in.post("/tokens/", data={"name": "WHMCS", "role": "operator",
                                                "allowed_ips": "192.0.2.10", "expires_at": ""})
    assert response.status_code == 200
    token = re.search(r'value="(pqv_[^"]+)" id="new-token"', response.get_data(as_text=True)).group(1)
    row = tokens.get(db, "WHMCS")
    assert (row["role"], row["allowed_ips"]) == ("operator", "192.0.2.10/32")
    assert tokens.authenticate(db, f"Bearer {token}", "192.0.2.10")["name"] == "WHMCS"
    listing = client.get("/tokens/").get_data(as_text=True)
    assert "WHMCS" in listing and token not in listing and token[4:14] not in listing


def test_a_bad_token_form_shows_its_errors(logged_in, client, db):
    response = logged_in.post("/tokens/", data={"name": "", "role": "operator", "allowed_ips": "nope",
                                                "expires_at": ""})
    assert response.status_code == 422
    assert "is not a network" in response.get_data(as_text=True)
    assert tokens.list_all(db) == []


def test_an_admin_revokes_then_deletes_a_token(logged_in, client, db):
    row, token = tokens.create(db, "old-script")
    logged_in.post(f"/tokens/{row['id']}/delete")
    assert tokens.get(db, row["id"]) is not None           # an active token is revoked first
    logged_in.post(f"/tokens/{row['id']}/revoke")
    assert client.get("/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    logged_in.post(f"/tokens/{row['id']}/delete")
    assert tokens.get(db, row["id"]) is None


def test_operators_cannot_manage_tokens(auth, client):
    auth.login("op", "correct horse battery", role="operator")
    assert client.get("/tokens/").status_code == 403


# ------------------------------------------------------------------ the CLI

@pytest.fixture
def run(tmp_path):
    config = tmp_path / "puqvpn.conf"
    config.write_text(f"INSTANCE_DIR = {tmp_path / 'data'}\nSYSTEM_APPLY = 0\n")

    def run(*args):
        return CliRunner().invoke(cli.cli, ["--config", str(config), *args], catch_exceptions=False)
    run.db = lambda: connect(settings_module.load(str(config), environ={})["DATABASE"])
    return run


def test_the_cli_prints_a_new_token_once_on_stdout(run):
    result = run("token", "create", "--name", "provisioning", "--role", "operator",
                 "--allowed-ips", "10.0.0.0/8", "--expires", "2099-12-31")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert re.fullmatch(r"pqv_[A-Za-z0-9_-]{43}", token)
    db = run.db()
    row = tokens.authenticate(db, f"Bearer {token}", "10.2.3.4")
    assert (row["name"], row["role"], row["expires_at"]) == ("provisioning", "operator", "2099-12-31")
    assert tuple(db.execute("SELECT actor, action FROM audit_log").fetchall()[-1]) == ("cli", "token.create")
    db.conn.close()

    listed = run("token", "list")
    assert "provisioning" in listed.stdout and token not in listed.stdout
    assert run("token", "revoke", "provisioning").exit_code == 0
    assert "revoked" in run("token", "list").stdout


def test_the_cli_refuses_bad_input(run):
    result = run("token", "create", "--name", "x", "--expires", "2001-01-01")
    assert result.exit_code != 0 and "expires_at: the date is in the past" in result.output
    assert run("token", "revoke", "nobody").exit_code != 0

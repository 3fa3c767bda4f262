"""The audit log: every change through the UI and the API is recorded, with who, when, from where,
what and the outcome; admins can filter it."""

import pytest

from puqvpn.db import connect
from puqvpn.services import audit, clients, users

from .conftest import csrf_token
from .routes import login_as, make_app, seed


@pytest.fixture
def panel(tmp_path):
    app = make_app(tmp_path)
    values, api_tokens, ids = seed(app)
    db = connect(app.config["PUQVPN"]["DATABASE"])
    yield app, db, values, api_tokens, ids
    db.conn.close()


def entries(db):
    return [dict(row) for row in db.execute("SELECT * FROM audit_log ORDER BY id")]


def logged_in(app, user_id, address="192.0.2.20"):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    login_as(client, user_id)
    return client


def test_a_change_in_the_ui_is_recorded_with_who_where_what_and_outcome(panel):
    app, db, values, _tokens, ids = panel
    client = logged_in(app, ids["operator"])
    response = client.post(f"/clients/{values['client_id']}/suspend", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 302
    entry = entries(db)[-1]
    assert entry["actor"] == "operator" and entry["source_ip"] == "192.0.2.20"
    assert entry["action"] == "clients.suspend" and entry["target"] == f"client_id={values['client_id']}"
    assert entry["outcome"] == "ok" and entry["at"].endswith("Z")


def test_a_refused_change_is_recorded_as_failed_or_denied(panel):
    app, db, values, _tokens, ids = panel
    operator = logged_in(app, ids["operator"])
    operator.post("/clients/new", data={"interface": values["interface_id"], "name": "bad name;rm",
                                        "csrf_token": csrf_token(operator)})
    invalid = entries(db)[-1]
    assert (invalid["action"], invalid["outcome"]) == ("clients.new", "failed") and "422" in invalid["detail"]
    operator.post("/accounts/new", data={"username": "mallory", "role": "admin", "csrf_token": csrf_token(operator)})
    forbidden = entries(db)[-1]
    assert (forbidden["action"], forbidden["outcome"]) == ("accounts.new", "denied")
    assert "needs the admin role" in forbidden["detail"]
    anonymous = app.test_client()
    anonymous.post(f"/clients/{values['client_id']}/delete", data={"csrf_token": csrf_token(anonymous)})
    entry = entries(db)[-1]
    assert (entry["actor"], entry["outcome"]) == ("anonymous", "denied") and "not logged in" in entry["detail"]
    operator.post(f"/clients/{values['client_id']}/delete")
    entry = entries(db)[-1]
    assert entry["outcome"] == "denied" and "CSRF" in entry["detail"]
    assert clients.get(db, values["client_id"]) is not None


def test_an_api_change_is_recorded_under_the_token_name(panel):
    app, db, _values, api_tokens, _ids = panel
    client = app.test_client()
    response = client.post("/api/v1/clients", json={"interface": "wg0", "name": "bob"},
                           headers={"Authorization": f"Bearer {api_tokens['operator']}"},
                           environ_base={"REMOTE_ADDR": "198.51.100.3"})
    assert response.status_code == 201
    entry = entries(db)[-1]
    assert entry["actor"] == "token:test-operator" and entry["source_ip"] == "198.51.100.3"
    assert entry["action"] == "api.create_client" and entry["outcome"] == "ok"
    client.delete("/api/v1/clients/bob", headers={"Authorization": f"Bearer {api_tokens['viewer']}"})
    denied = entries(db)[-1]
    assert (denied["actor"], denied["action"], denied["target"], denied["outcome"]) == \
        ("token:test-viewer", "api.delete_client", "name=bob", "denied")


def test_logout_and_password_change_keep_who_did_them(panel):
    app, db, _values, _tokens, ids = panel
    client = logged_in(app, ids["admin"])
    client.post("/auth/logout", data={"csrf_token": csrf_token(client)})
    entry = entries(db)[-1]
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("admin", "auth.logout", "ok")


def test_account_changes_name_the_account(panel):
    app, db, _values, _tokens, ids = panel
    client = logged_in(app, ids["admin"])
    client.post("/accounts/new", data={"username": "carol", "role": "viewer", "csrf_token": csrf_token(client)})
    created = entries(db)[-1]
    assert (created["action"], created["target"], created["outcome"]) == ("accounts.new", "user=carol", "ok")
    carol = users.get(db, "carol")
    client.post(f"/accounts/{carol['id']}/role", data={"role": "operator", "csrf_token": csrf_token(client)})
    changed = entries(db)[-1]
    assert changed["target"] == "user=carol" and "viewer -> operator" in changed["detail"]
    client.post(f"/accounts/{ids['admin']}/delete", data={"csrf_token": csrf_token(client)})
    refused = entries(db)[-1]
    assert refused["outcome"] == "failed" and users.get(db, "admin") is not None


def test_the_cli_and_other_callers_record_through_the_service(panel):
    _app, db, *_rest = panel
    entry_id = audit.record(db, "cli", "", "cli.reset-password", "user=alice", "ok")
    assert entries(db)[-1]["id"] == entry_id
    with pytest.raises(ValueError):
        audit.record(db, "cli", "", "cli.x", "", "maybe")


def test_admins_filter_the_log_by_actor_action_outcome_and_date(panel):
    app, db, _values, _tokens, ids = panel
    for number in range(60):
        audit.record(db, "alice" if number % 2 else "bob", "192.0.2.1", f"clients.edit", f"client_id={number}",
                     "ok" if number % 3 else "failed")
    audit.record(db, "alice", "192.0.2.1", "interfaces.new", "", "ok")
    db.execute("UPDATE audit_log SET at = '2020-01-01T10:00:00Z' WHERE target = 'client_id=0'")
    client = logged_in(app, ids["admin"])
    page = client.get("/audit/").get_data(as_text=True)
    assert "61 entries" in page and "Page 1 of 2" in page
    page = client.get("/audit/?actor=alice&action=clients.&outcome=ok").get_data(as_text=True)
    expected = sum(1 for n in range(60) if n % 2 and n % 3)
    assert f"{expected} entries" in page and "interfaces.new" not in page
    page = client.get("/audit/?since=2020-01-01&until=2020-01-01").get_data(as_text=True)
    assert "1 entry" in page and "client_id=0" in page
    rows, total = audit.search(db, action="clients.", page=2, per_page=50)
    assert total == 60 and len(rows) == 10
    assert client.get("/audit/?since=not-a-date").status_code == 200


def test_the_log_page_is_for_admins_only(panel):
    app, _db, _values, _tokens, ids = panel
    assert logged_in(app, ids["operator"]).get("/audit/").status_code == 403
    assert logged_in(app, ids["viewer"]).get("/audit/").status_code == 403


def test_a_share_link_token_in_the_url_is_masked_in_the_log(panel):
    app, db, values, _tokens, _ids = panel
    from puqvpn.services import share_links
    _row, token = share_links.create(db, values["client_id"])
    app.test_client().post(f"/s/{token}")
    entry = entries(db)[-1]
    assert entry["action"] == "share.open_link" and entry["target"] == "token=***"
    assert token not in str(entries(db))


def test_old_audit_entries_are_pruned_after_the_retention_period(app, db):
    import datetime

    from puqvpn.services import audit
    from puqvpn.services.system import Context, FakeRunner

    db.execute("INSERT INTO audit_log (at, actor, action, outcome) VALUES ('2020-01-01T00:00:00Z', 'old', 'x', 'ok')")
    audit.record(db, "admin", "127.0.0.1", "client.create", "alice")
    ctx = Context(db, app.config["PUQVPN"], FakeRunner())
    assert audit.prune(ctx, now=datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)) == 1
    assert [row["actor"] for row in db.query("SELECT actor FROM audit_log")] == ["admin"]

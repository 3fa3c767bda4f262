"""The hardened web layer: CSRF on every form route, security headers on every answer,
pages CSP can serve unchanged, no secret in logs, error pages or the audit log, private files.
"""

import logging
import re
import stat
from pathlib import Path

import pytest

from puqvpn import ROOT
from puqvpn.db import connect
from puqvpn.services import audit, backup, clients, interfaces, users, wireguard
from puqvpn.services.system import Context, FakeRunner

from .routes import CHANGING, csrf_token, login_as, make_app, routes, seed, url_for_rule

TABLES = ("users", "interfaces", "clients", "api_tokens", "share_links", "options", "certificates",
          "port_forwards")


def snapshot(app):
    """Every row that matters, to show a refused request changed nothing."""
    db = connect(app.config["PUQVPN"]["DATABASE"])
    try:
        return {table: [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
                for table in TABLES}
    finally:
        db.conn.close()


# Form routes that carry their own secret instead of a session, so CSRF cannot apply.
CSRF_EXEMPT = {
    "share.open_link": "the share link's unguessable token is the credential; no session cookie is involved",
}


def _form_routes(app):
    return [(endpoint, method, rule) for endpoint, method, rule in routes(app)
            if method in CHANGING and not rule.rule.startswith("/api/") and endpoint not in CSRF_EXEMPT]


@pytest.fixture
def seeded(tmp_path):
    app = make_app(tmp_path)
    values, api_tokens, ids = seed(app)
    return app, values, api_tokens, ids


# ---------------------------------------------------------------- CSRF

def test_every_form_route_refuses_a_request_without_a_csrf_token(seeded):
    app, values, _tokens, ids = seeded
    checked = []
    for endpoint, method, rule in _form_routes(app):
        client = app.test_client()
        login_as(client, ids["admin"])
        before = snapshot(app)
        response = client.open(url_for_rule(rule, values), method=method,
                               data={"name": "x", "username": "x", "role": "viewer"})
        assert response.status_code == 400, f"{method} {rule.rule} accepted a form without a CSRF token"
        assert b"security token" in response.data
        assert snapshot(app) == before, f"{method} {rule.rule} changed data without a CSRF token"
        checked.append(endpoint)
    assert "clients.new" in checked and "accounts.new" in checked and "auth.logout" in checked


def test_a_token_from_another_session_is_refused(seeded):
    app, _values, _tokens, ids = seeded
    other = app.test_client()
    foreign = csrf_token(other)
    client = app.test_client()
    login_as(client, ids["admin"])
    client.get("/")
    before = snapshot(app)
    response = client.post("/accounts/new", data={"username": "mallory", "role": "admin", "csrf_token": foreign})
    assert response.status_code == 400
    assert snapshot(app) == before


def test_the_api_ignores_the_session_cookie(seeded):
    # The API is CSRF-exempt because only a Bearer token authenticates it, never the browser's cookie.
    app, _values, _tokens, ids = seeded
    client = app.test_client()
    login_as(client, ids["admin"])
    assert client.get("/").status_code == 200
    response = client.post("/api/v1/clients", json={"interface": "wg0", "name": "via-cookie"})
    assert response.status_code == 401
    assert clients.get(connect(app.config["PUQVPN"]["DATABASE"]), "via-cookie") is None


# ---------------------------------------------------------------- headers

def check_headers(response, where):
    csp = response.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp, where
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("X-Frame-Options") == "DENY", where
    assert response.headers.get("Referrer-Policy") == "same-origin", where


def test_every_page_and_answer_carries_the_security_headers(seeded):
    app, values, api_tokens, ids = seeded
    client = app.test_client()
    login_as(client, ids["admin"])
    pages = 0
    for endpoint, method, rule in routes(app):
        if method != "GET":
            continue
        url = url_for_rule(rule, values)
        headers = {"Authorization": f"Bearer {api_tokens['admin']}"} if url.startswith("/api/") else {}
        response = client.get(url, headers=headers)
        check_headers(response, f"GET {url} ({response.status_code})")
        pages += 1
    # Refusals and errors too: a 404, a 403, the login redirect, a CSRF refusal, a bad API token.
    check_headers(client.get("/no/such/page"), "404")
    viewer = app.test_client()
    login_as(viewer, ids["viewer"])
    check_headers(viewer.get("/accounts/"), "403")
    check_headers(app.test_client().get("/clients/"), "login redirect")
    check_headers(client.post("/clients/new"), "CSRF refusal")
    check_headers(app.test_client().get("/api/v1/clients", headers={"Authorization": "Bearer nope"}), "401")
    assert pages > 30


def test_hsts_is_sent_when_the_panel_serves_https(tmp_path):
    app = make_app(tmp_path, TLS_CERT=str(tmp_path / "cert.pem"), TLS_KEY=str(tmp_path / "key.pem"))
    response = app.test_client().get("/auth/login", base_url="https://panel.example")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = make_app(tmp_path / "plain").test_client().get("/auth/login")
    assert "Strict-Transport-Security" not in plain.headers


# ---------------------------------------------------------------- CSP-safe markup

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[^>]*\sstyle\s*=", re.I)
STYLE_ELEMENT = re.compile(r"<style[\s>]", re.I)
JS_URL = re.compile(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", re.I)


def csp_violations(text):
    found = []
    for name, pattern in (("inline <script>", INLINE_SCRIPT), ("on* handler", EVENT_HANDLER),
                          ("style= attribute", STYLE_ATTRIBUTE), ("<style> element", STYLE_ELEMENT),
                          ("javascript: URL", JS_URL)):
        found += [f"{name}: {match.group(0)[:80]}" for match in pattern.finditer(text)]
    return found


def test_no_template_has_markup_the_csp_would_block():
    problems = {}
    for path in sorted((ROOT / "templates").rglob("*.html")):
        found = csp_violations(path.read_text())
        if found:
            problems[str(path.relative_to(ROOT))] = found
    assert problems == {}


def test_no_rendered_page_has_markup_the_csp_would_block(seeded):
    # Macros and filters can produce attributes a template scan misses: check the pages as served.
    app, values, _tokens, ids = seeded
    client = app.test_client()
    login_as(client, ids["admin"])
    problems = {}
    for endpoint, method, rule in routes(app):
        url = url_for_rule(rule, values)
        if method != "GET" or url.startswith("/api/") or endpoint == "static":
            continue
        response = client.get(url)
        if response.mimetype == "text/html":
            found = csp_violations(response.get_data(as_text=True))
            if found:
                problems[url] = found
    assert problems == {}


def test_the_csp_allows_no_inline_script_and_htmx_is_configured_for_it(seeded):
    app, _values, _tokens, ids = seeded
    client = app.test_client()
    login_as(client, ids["admin"])
    response = client.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert re.search(r"script-src 'self'(;|$)", csp)
    page = response.get_data(as_text=True)
    config = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'', page).group(1)
    # htmx must not evaluate strings or run scripts from swapped-in HTML, and must not inject a <style>.
    assert '"allowEval": false' in config and '"allowScriptTags": false' in config
    assert '"includeIndicatorStyles": false' in config


# ---------------------------------------------------------------- secrets

@pytest.fixture
def secrets_in_play(seeded, caplog):
    """Drive the panel through logins, failures, forms and the API; return every secret involved."""
    app, values, api_tokens, ids = seeded
    caplog.set_level(logging.DEBUG)
    db = connect(app.config["PUQVPN"]["DATABASE"])
    admin_password = "Panel-Admin-Secret-91"
    users.set_password(db, "admin", admin_password)
    interface = interfaces.get(db, "wg0")
    alice = clients.get(db, "alice")
    clients.set_password(db, alice["id"], "Ikev2-Client-Secret-57")
    alice = clients.get(db, "alice")
    secrets_ = {"admin password": admin_password, "interface private key": interface["private_key"],
                "client private key": alice["private_key"], "client preshared key": alice["preshared_key"],
                "client ikev2 password": alice["password"], "api token": api_tokens["admin"]}

    client = app.test_client()
    # Failed and successful logins, a wrong current password, a CSRF refusal, a 404.
    pages = [client.post("/auth/login", data={"username": "admin", "password": admin_password + "x",
                                              "csrf_token": csrf_token(client)})]
    pages.append(client.post("/auth/login", data={"username": "admin", "password": admin_password}))
    pages.append(client.post("/auth/login", data={"username": "admin", "password": admin_password,
                                                  "csrf_token": csrf_token(client)}))
    token = csrf_token(client)
    pages.append(client.post("/auth/password", data={"current": admin_password + "y", "new": "x" * 12,
                                                     "confirm": "x" * 12, "csrf_token": token}))
    pages.append(client.post("/accounts/new", data={"username": "bad name", "role": "viewer",
                                                    "password": "Typed-Account-Secret-33", "csrf_token": token}))
    secrets_["typed account password"] = "Typed-Account-Secret-33"
    pages.append(client.post(f"/clients/{alice['id']}/password",
                             data={"password": "Posted-Client-Secret-12", "csrf_token": token}))
    secrets_["posted client password"] = "Posted-Client-Secret-12"
    pages.append(client.get("/no/such/page"))
    # The API: a created client, a refused one, a bad token that looks like a real one.
    bearer = {"Authorization": f"Bearer {api_tokens['admin']}"}
    pages.append(client.post("/api/v1/clients", json={"interface": "wg0", "name": "bob"}, headers=bearer))
    pages.append(client.post("/api/v1/clients", json={"interface": "wg0", "name": "bad\nname",
                                                      "password": "Api-Client-Secret-77"}, headers=bearer))
    secrets_["api client password"] = "Api-Client-Secret-77"
    wrong = api_tokens["admin"][:-4] + "AAAA"
    pages.append(client.get("/api/v1/clients", headers={"Authorization": f"Bearer {wrong}"}))
    secrets_["guessed api token"] = wrong
    bob = clients.get(db, "bob")
    secrets_["api-created private key"] = bob["private_key"]
    rows = [" ".join(str(v) for v in row) for row in db.execute("SELECT * FROM audit_log")]
    db.conn.close()
    return secrets_, pages, rows, caplog


def test_no_secret_reaches_the_audit_log(secrets_in_play):
    secrets_, _pages, audit_rows, _log = secrets_in_play
    assert len(audit_rows) >= 8
    leaked = {name: row for name, secret in secrets_.items() for row in audit_rows if secret in row}
    assert leaked == {}


def test_no_secret_reaches_the_log(secrets_in_play):
    secrets_, _pages, _rows, caplog = secrets_in_play
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert [name for name, secret in secrets_.items() if secret in text] == []


def test_no_typed_secret_is_echoed_on_an_error_page(secrets_in_play):
    secrets_, pages, _rows, _log = secrets_in_play
    typed = {name: secrets_[name] for name in ("admin password", "typed account password", "api client password",
                                               "guessed api token", "api token")}
    errors = [page for page in pages if page.status_code >= 400]
    assert len(errors) >= 5
    echoed = {name: page.status_code for page in errors for name, secret in typed.items()
              if secret in page.get_data(as_text=True)}
    assert echoed == {}


def test_the_audit_log_masks_secrets_a_route_might_pass_in(seeded):
    app, *_rest = seeded
    db = connect(app.config["PUQVPN"]["DATABASE"])
    key = interfaces.get(db, "wg0")["private_key"]
    audit.record(db, "alice", "192.0.2.1", "test.action", "x", "failed",
                 f'password=hunter2 token: abc123 {{"private_key": "{key}"}} Bearer xyz.987 '
                 "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----")
    row = dict(db.execute("SELECT * FROM audit_log ORDER BY id DESC LIMIT 1").fetchone())
    db.conn.close()
    for secret in ("hunter2", "abc123", key, "xyz.987", "MIIB"):
        assert secret not in row["detail"]
    assert "password=***" in row["detail"] and "\n" not in row["detail"]


# ---------------------------------------------------------------- files

def _modes(folder):
    found = {}
    for path in [Path(folder), *Path(folder).rglob("*")]:
        found[str(path)] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_key_and_database_files_are_0600_in_0700_folders(seeded, tmp_path):
    app, *_rest = seeded
    settings = app.config["PUQVPN"]
    db = connect(settings["DATABASE"])
    ctx = Context(db, settings, FakeRunner())
    interface = interfaces.get(db, "wg0")
    wireguard.write_config(ctx, interface, clients.for_interface(db, interface["id"]))
    backup.scheduled_backup(db, settings)
    db.execute("UPDATE options SET value = value")   # the -wal file exists while a connection is open
    checked = {}
    for folder in (settings["INSTANCE_DIR"], settings["WG_CONF_DIR"], settings["BACKUP_DIR"]):
        checked.update(_modes(folder))
    db.conn.close()
    wrong = {path: oct(mode) for path, mode in checked.items()
             if mode != (0o700 if Path(path).is_dir() else 0o600)}
    assert wrong == {}
    names = {Path(path).name for path in checked}
    assert {"puqvpn.sqlite3", "secret_key", "wg0.conf"} <= names
    assert any(name.endswith("-wal") for name in names)
    assert any(name.endswith(".tar.gz") for name in names)


def test_a_failing_command_does_not_leak_a_key_into_the_message_or_the_log(tmp_path, monkeypatch, caplog):
    # The failure text goes into apply_error (shown on every page) and the log: no key may ride along.
    from puqvpn.services import apply, system
    from .fake_system import FakeSystem, fail
    fake = FakeSystem()
    monkeypatch.setattr(system, "runner_from_settings", lambda settings: fake.runner)
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "firewall"))
    wireguard.forget_backend()
    caplog.set_level(logging.DEBUG)
    app = make_app(tmp_path, SYSTEM_APPLY="1")
    values, _tokens, ids = seed(app)
    db = connect(app.config["PUQVPN"]["DATABASE"])
    apply.reconcile(Context(db, app.config["PUQVPN"], fake.runner))
    for prefix in (("wg",), ("nft",), ("ip",)):
        fake.runner.responses[prefix] = fail("error: Operation not permitted")
    client = app.test_client()
    login_as(client, ids["admin"])
    client.post("/clients/new", data={"interface": str(values["interface_id"]), "name": "bob",
                                      "csrf_token": csrf_token(client)})
    wireguard.flush_config_writes()
    bob, interface = clients.get(db, "bob"), interfaces.get(db, "wg0")
    assert interface["apply_error"] and "Operation not permitted" in interface["apply_error"]
    # The dashboard shows the flashed failure and the pending banner (the client's own page shows its
    # profile, key included, on purpose).
    dashboard = client.get("/").get_data(as_text=True)
    assert "Saved, but not yet live" in dashboard and "is not in sync" in dashboard
    shown = dashboard + interface["apply_error"]
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    audit_rows = " ".join(str(tuple(row)) for row in db.execute("SELECT * FROM audit_log"))
    db.conn.close()
    for name in ("private_key", "preshared_key", "password"):
        assert bob[name] not in shown and bob[name] not in logged and bob[name] not in audit_rows, name
    assert interface["private_key"] not in shown + logged + audit_rows

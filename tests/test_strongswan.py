"""The strongSwan backend without a daemon: files, options, checks, and what it asks charon to do.

The live behaviour against a real charon is in test_ikev2_tunnel.py; here a
recording stand-in for the VICI session shows which items each change
touches, and that nothing else is touched.
"""

import os
import stat

import pytest

from puqvpn import settings as settings_module
from puqvpn.db import connect
from puqvpn.services import clients, interfaces, pki, strongswan
from puqvpn.services.system import CommandError, Context, FakeRunner
from puqvpn.services.validation import ValidationError


@pytest.fixture
def ctx(tmp_path):
    db = connect(tmp_path / "panel.sqlite3")
    settings = settings_module.load(environ={}, INSTANCE_DIR=str(tmp_path), SWANCTL_DIR=str(tmp_path / "swanctl"),
                                    VICI_SOCKET=str(tmp_path / "charon.vici"),
                                    STRONGSWAN_CONF_DIR=str(tmp_path / "strongswan.d"))
    yield Context(db, settings, FakeRunner())
    db.conn.close()


@pytest.fixture
def setup(ctx):
    pki.generate_ca(ctx.db, "Test CA", "Test Org", key_type="ecdsa-p256")
    pki.generate_server(ctx.db, "vpn.example.com", "203.0.113.7")
    interface = interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                           "endpoint": "vpn.example.com", "dns": "10.8.0.1, 9.9.9.9",
                                           "ikev2_enabled": "1"})
    alice = clients.create(ctx.db, {"interface": interface["id"], "name": "alice"})
    bob = clients.create(ctx.db, {"interface": interface["id"], "name": "bob"})
    return interface, alice, bob


class RecordingVici:
    """Stands in for vici.Session: keeps loaded items and records every call."""

    def __init__(self, sas=()):
        self.calls = []
        self.conns, self.secrets, self.pools = {}, {}, {}
        self.sas = list(sas)

    def _record(self, name, arg=None):
        self.calls.append((name, arg))

    def load_cert(self, cert):
        self._record("load_cert", cert["flag"])

    def load_key(self, key):
        self._record("load_key", key["type"])

    def load_conn(self, conn):
        self._record("load_conn", list(conn)[0])
        self.conns.update(conn)

    def load_shared(self, secret):
        self._record("load_shared", secret["id"])
        self.secrets[secret["id"]] = secret

    def load_pool(self, pool):
        self._record("load_pool", list(pool)[0])
        self.pools.update(pool)

    def unload_conn(self, what):
        self._record("unload_conn", what["name"])
        del self.conns[what["name"]]

    def unload_shared(self, what):
        self._record("unload_shared", what["id"])
        del self.secrets[what["id"]]

    def unload_pool(self, what):
        self._record("unload_pool", what["name"])
        del self.pools[what["name"]]

    def get_conns(self):
        return {"conns": [name.encode() for name in self.conns]}

    def get_shared(self):
        return {"keys": [name.encode() for name in self.secrets]}

    def get_pools(self, _options):
        return {name: {} for name in self.pools}

    def list_sas(self):
        return iter([{name: ike} for name, ike in self.sas])

    def terminate(self, what):
        self._record("terminate", what["ike-id"])
        self.sas = [(n, ike) for n, ike in self.sas if ike["uniqueid"] != what["ike-id"].encode()]
        return iter([])

    def of(self, kind):
        return [arg for name, arg in self.calls if name == kind]


def sa(name, uniqueid, remote_id, eap_id=None, vip="10.8.0.2"):
    ike = {"uniqueid": str(uniqueid).encode(), "state": b"ESTABLISHED", "remote-host": b"198.51.100.9",
           "remote-port": b"4500", "remote-id": remote_id.encode(), "established": b"42",
           "remote-vips": [vip.encode()],
           "child-sas": {"net-1": {"bytes-in": b"1000", "bytes-out": b"2000"},
                         "net-2": {"bytes-in": b"10", "bytes-out": b"20"}}}
    if eap_id:
        ike["remote-eap-id"] = eap_id.encode()
    return (name, ike)


@pytest.fixture
def vici_session(monkeypatch):
    session = RecordingVici()
    monkeypatch.setattr(strongswan, "open_session", lambda ctx, timeout=10: session)
    return session


# ------------------------------------------------------------------ files

def test_files_hold_the_probe_then_one_connection_pool_and_secret_per_active_client(ctx, setup):
    interface, alice, bob = setup
    clients.suspend(ctx.db, bob["id"])
    strongswan.write_files(ctx)
    base = ctx.settings.path("SWANCTL_DIR")
    text = (base / "conf.d" / "puqvpn.conf").read_text()
    a = strongswan.names(alice["id"])
    b = strongswan.names(bob["id"])
    assert text.index("puqvpn-probe {") < text.index(f"{a['conn']} {{")
    assert "remote_addrs = 0.0.0.0/1,128.0.0.0/1,::/1,8000::/1" in text
    assert "groups = puqvpn-no-such-group" in text
    assert f"eap_id = {alice['username']}" in text
    assert f"addrs = {alice['ip']}/32" in text and "dns = 10.8.0.1,9.9.9.9" in text
    assert "secret = 0s" in text and alice["password"] not in text
    assert b["conn"] not in text and bob["username"] not in text       # suspended: no secret
    # every connection offers the same proposals, local auth and certificate
    assert text.count("proposals = " + ",".join(strongswan.DEFAULT_OPTIONS["ike_proposals"])) == 2
    assert text.count("certs = puqvpn-server.pem") == 2 and text.count("id = vpn.example.com") == 2
    key = base / "private" / "puqvpn-server.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(base / "conf.d" / "puqvpn.conf").st_mode) == 0o600
    assert (base / "x509ca" / "puqvpn-ca.pem").read_text() == pki.get(ctx.db, "ca")["cert_pem"]
    assert (base / "swanctl.conf").read_text() == "include conf.d/*.conf\n"


def test_nothing_is_offered_until_both_certificates_exist(ctx):
    interface = interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                           "endpoint": "vpn.example.com", "ikev2_enabled": "1"})
    clients.create(ctx.db, {"interface": interface["id"], "name": "alice"})
    pki.generate_ca(ctx.db, "Test CA", "Test Org", key_type="ecdsa-p256")
    assert strongswan.desired(ctx)["connections"] == {}
    strongswan.write_files(ctx)
    base = ctx.settings.path("SWANCTL_DIR")
    assert "connections" not in (base / "conf.d" / "puqvpn.conf").read_text()
    assert not (base / "private" / "puqvpn-server.pem").exists()


def test_an_interface_without_ikev2_offers_nothing(ctx, setup):
    interface, _alice, _bob = setup
    interfaces.update(ctx.db, interface["id"], {"ikev2_enabled": "0"})
    assert strongswan.desired(ctx)["connections"] == {}


@pytest.mark.parametrize("username, password", [
    ("alice\n}", "Password-123"),
    ("ali ce", "Password-123"),
    ('al"ice', "Password-123"),
    ("alice", 'Pass"word-123'),
    ("alice", "Pass\nword-123"),
    ("alice", "Pass\\word-123"),
])
def test_credentials_that_could_break_out_of_the_file_are_refused(username, password):
    with pytest.raises(strongswan.StrongswanError):
        strongswan.check_credentials({"id": 1, "name": "x", "username": username, "password": password})


def test_braces_and_hashes_in_a_password_are_harmless_because_it_is_written_base64(ctx, setup):
    _interface, alice, _bob = setup
    clients.set_password(ctx.db, alice["id"], "a{b}c#d$e=f")
    text = strongswan.render_conf(strongswan.desired(ctx))
    assert "a{b}c#d$e=f" not in text
    assert "0s" + __import__("base64").b64encode(b"a{b}c#d$e=f").decode() in text


def test_the_renderer_refuses_unsafe_values():
    state = {"connections": {"x": {"remote": {"eap_id": "a\nb"}}}, "pools": {}, "secrets": {}}
    with pytest.raises(strongswan.StrongswanError, match="break out"):
        strongswan.render_conf(state)


# ------------------------------------------------------------------ options

def test_options_default_store_and_reset(ctx):
    assert strongswan.get_options(ctx.db) == strongswan.DEFAULT_OPTIONS
    saved = strongswan.set_options(ctx.db, {"ike_proposals": "aes256-sha256-modp2048, aes256-sha1-modp1024",
                                            "dpd_delay": "60", "mobike": "0"})
    assert saved["ike_proposals"] == ["aes256-sha256-modp2048", "aes256-sha1-modp1024"]
    assert strongswan.get_options(ctx.db)["dpd_delay"] == 60
    assert strongswan.get_options(ctx.db)["mobike"] is False
    assert strongswan.reset_options(ctx.db) == strongswan.DEFAULT_OPTIONS


@pytest.mark.parametrize("values, field", [
    ({"ike_proposals": ""}, "ike_proposals"),
    ({"ike_proposals": "aes256-sha256;modp2048"}, "ike_proposals"),
    ({"esp_proposals": "aes256gcm16\n}"}, "esp_proposals"),
    ({"dpd_delay": "1"}, "dpd_delay"),
    ({"dpd_delay": "soon"}, "dpd_delay"),
    ({"child_rekey_time": "999999"}, "child_rekey_time"),
])
def test_bad_options_are_refused_and_the_stored_ones_kept(ctx, values, field):
    strongswan.set_options(ctx.db, {"dpd_delay": "45"})
    with pytest.raises(ValidationError) as error:
        strongswan.set_options(ctx.db, values)
    assert field in error.value.fields
    assert strongswan.get_options(ctx.db)["dpd_delay"] == 45


def test_every_default_proposal_says_which_client_it_is_for():
    for proposal, client in strongswan.IKE_PROPOSALS + strongswan.ESP_PROPOSALS:
        assert strongswan.PROPOSAL.fullmatch(proposal) and client
    assert "aes256-sha1-modp1024" in strongswan.DEFAULT_OPTIONS["ike_proposals"]     # Windows defaults
    assert strongswan.DEFAULT_OPTIONS["ike_proposals"][0].startswith("aes256gcm16")  # modern first


# ------------------------------------------------------------------ backend and status

def test_the_backend_setting_forces_a_choice(ctx):
    ctx.settings["IPSEC_BACKEND"] = "kernel"
    assert strongswan.ipsec_backend(ctx) == "kernel"
    assert not strongswan.write_backend_snippet(ctx)
    ctx.settings["IPSEC_BACKEND"] = "libipsec"
    assert strongswan.write_backend_snippet(ctx)
    snippet = ctx.settings.path("STRONGSWAN_CONF_DIR") / strongswan.LIBIPSEC_SNIPPET
    assert "load = yes" in snippet.read_text() and "install_routes = yes" in snippet.read_text()
    ctx.settings["IPSEC_BACKEND"] = "kernel"
    assert strongswan.write_backend_snippet(ctx) and not snippet.exists()
    ctx.settings["IPSEC_BACKEND"] = "maybe"
    with pytest.raises(strongswan.StrongswanError):
        strongswan.ipsec_backend(ctx)


def test_charon_down_is_reported_not_raised(ctx):
    status = strongswan.charon_status(ctx)
    assert status["up"] is False
    assert "not running" in status["reason"] and str(ctx.settings["VICI_SOCKET"]) in status["reason"]


def test_a_client_change_with_charon_down_raises_a_clear_command_error(ctx, setup):
    _interface, alice, _bob = setup
    interface = interfaces.get(ctx.db, alice["interface_id"])
    with pytest.raises(CommandError, match="charon.*not running"):
        strongswan.client_changed(ctx, interface, clients.get(ctx.db, alice["id"]))
    # the files were still written, for the next start
    assert alice["username"] in (ctx.settings.path("SWANCTL_DIR") / "conf.d" / "puqvpn.conf").read_text()


def test_reconcile_with_nothing_to_offer_does_not_need_charon(ctx):
    assert isinstance(strongswan.reconcile(ctx, []), list)


# ------------------------------------------------------------------ live changes, one client at a time

def test_a_client_change_loads_only_that_client(ctx, setup, vici_session):
    interface, alice, _bob = setup
    strongswan.client_changed(ctx, interface, clients.get(ctx.db, alice["id"]))
    a = strongswan.names(alice["id"])
    assert vici_session.of("load_conn") == ["puqvpn-probe", a["conn"]]
    assert vici_session.of("load_shared") == [a["secret"]]
    assert vici_session.of("load_pool") == [a["pool"]]
    assert vici_session.pools[a["pool"]] == {"addrs": f"{alice['ip']}/32", "dns": ["10.8.0.1", "9.9.9.9"]}
    assert vici_session.secrets[a["secret"]]["data"] == alice["password"]
    assert vici_session.conns[a["conn"]]["local"]["certs"] == [pki.get(ctx.db, "server")["cert_pem"]]
    assert vici_session.of("terminate") == []


def test_suspending_unloads_and_ends_only_that_clients_sessions(ctx, setup, vici_session):
    interface, alice, bob = setup
    for client in (alice, bob):
        strongswan.client_changed(ctx, interface, clients.get(ctx.db, client["id"]))
    a = strongswan.names(alice["id"])
    vici_session.sas = [sa(a["conn"], 7, "198.51.100.9", "alice"),
                        sa(strongswan.names(bob["id"])["conn"], 8, "bob", vip="10.8.0.3")]
    vici_session.calls.clear()
    clients.suspend(ctx.db, alice["id"])
    strongswan.client_changed(ctx, interface, clients.get(ctx.db, alice["id"]))
    assert vici_session.calls == [("unload_shared", a["secret"]), ("unload_conn", a["conn"]),
                                  ("terminate", "7"), ("unload_pool", a["pool"])]
    assert [s["user"] for s in strongswan.list_sessions(ctx)] == ["bob"]


def test_deleting_removes_that_client_from_charon(ctx, setup, vici_session):
    interface, alice, _bob = setup
    strongswan.client_changed(ctx, interface, clients.get(ctx.db, alice["id"]))
    removed = clients.delete(ctx.db, alice["id"])
    strongswan.client_removed(ctx, interface, removed)
    assert strongswan.names(alice["id"])["conn"] not in vici_session.conns
    assert vici_session.secrets == {}


def test_reconcile_loads_everything_and_removes_only_stale_panel_items(ctx, setup, vici_session):
    interface, alice, bob = setup
    vici_session.conns = {"puqvpn-c999": {}, "someone-elses": {}}
    vici_session.secrets = {"eap-puqvpn-s999": {}, "their-secret": {}}
    vici_session.pools = {"puqvpn-p999": {}}
    changes = strongswan.reconcile(ctx, [(interface, [alice, bob])])
    assert set(vici_session.conns) == {"someone-elses", "puqvpn-probe", strongswan.names(alice["id"])["conn"],
                                       strongswan.names(bob["id"])["conn"]}
    assert "their-secret" in vici_session.secrets and "eap-puqvpn-s999" not in vici_session.secrets
    assert "puqvpn-p999" not in vici_session.pools
    assert any("unloaded puqvpn-c999" in change for change in changes)
    # a second run finds nothing missing
    assert not [c for c in strongswan.reconcile(ctx, [(interface, [alice, bob])]) if c.startswith("loaded")]


def test_sessions_name_the_user_by_eap_identity_and_add_up_child_bytes(ctx, vici_session):
    vici_session.sas = [sa("puqvpn-c4", 3, "198.51.100.9", "carol"), sa("puqvpn-c5", 4, "dave")]
    sessions = strongswan.list_sessions(ctx)
    assert [(s["user"], s["client_id"]) for s in sessions] == [("carol", 4), ("dave", 5)]
    assert sessions[0]["bytes_in"] == 1010 and sessions[0]["bytes_out"] == 2020
    assert sessions[0]["remote_addr"] == "198.51.100.9" and sessions[0]["virtual_ips"] == ["10.8.0.2"]
    assert sessions[0]["established_seconds"] == 42


def test_a_server_that_never_used_ikev2_gets_no_strongswan_files(ctx):
    interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                               "endpoint": "vpn.example.com"})
    assert strongswan.reconcile(ctx, []) == []
    assert not ctx.settings.path("SWANCTL_DIR").exists()
    assert not ctx.settings.path("STRONGSWAN_CONF_DIR").exists()


def test_a_dual_stack_client_gets_its_ipv6_address_as_a_second_one_address_pool(ctx):
    pki.generate_ca(ctx.db, "Test CA", "Test Org", key_type="ecdsa-p256")
    pki.generate_server(ctx.db, "vpn.example.com", "203.0.113.7")
    interface = interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "address6": "fd42:42::1/64",
                                           "listen_port": "51820", "endpoint": "vpn.example.com",
                                           "ikev2_enabled": "1"})
    alice = clients.create(ctx.db, {"interface": interface["id"], "name": "alice"})
    assert alice["ip6"]
    state = strongswan.desired(ctx)
    n = strongswan.names(alice["id"])
    assert state["connections"][n["conn"]]["pools"] == [n["pool"], n["pool6"]]
    assert state["pools"][n["pool6"]] == {"addrs": f"{alice['ip6']}/128"}
    assert state["connections"][n["conn"]]["children"][n["conn"]]["local_ts"] == ["0.0.0.0/0", "::/0"]


def test_reconcile_puts_the_ikev2_limits_back_on_a_device_charon_made_afresh(ctx, setup, vici_session):
    from puqvpn.services.system import Result

    interface, alice, _bob = setup
    clients.update(ctx.db, alice["id"], {"down_mbit": "5"})
    # charon restarted: ipsec0 is back with the kernel's default qdisc, none of our classes
    ctx.runner.responses[("tc", "qdisc", "show", "dev", "ipsec0")] = Result(0, "qdisc noqueue 0: root refcnt 2\n", "")
    changes = strongswan.reconcile(ctx, [(interface, clients.for_interface(ctx.db, interface["id"]))])
    assert "ipsec0: IKEv2 client limits rebuilt after charon started" in changes
    (batch,) = [stdin for argv, stdin in ctx.runner.calls if argv == ["tc", "-batch", "-"]]
    assert f"class replace dev ipsec0 parent 1: classid 1:{alice['id']:x} " in batch

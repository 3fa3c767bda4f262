"""IKEv2 end to end: the panel's strongSwan backend against real strongSwan clients.

  alice's phone  10.99.1.2 --veth-- 10.99.1.1 \\
  bob's laptop   10.99.2.2 --veth-- 10.99.2.1  server (charon-systemd, kernel-libipsec,
  wan host       10.99.3.2 --veth-- 10.99.3.1 /         wg interface 10.8.0.1/24)

The server is configured only through the service layer (pki, apply with
strongswan as one of its backends).  Each client is a separate charon
configured only from what a user downloads: the CA and the server address,
identity and EAP username from the client's .sswan, plus the password the
user types.  alice's charon sends its IP as IKE identity (as Windows does),
bob's sends his username (as iOS does).
"""

import base64
import json
import re
import secrets
import socket
import time

import pytest
import vici

from puqvpn import db as database
from puqvpn import settings as settings_module
from puqvpn.services import apply, pki, profiles, shaping, strongswan
from puqvpn.services import clients as clients_service
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services.system import Context, Runner
from tests.netns import Netns, requires_root_tools, veth, wait_until

pytestmark = [pytest.mark.netns,
              requires_root_tools("charon-systemd", "swanctl", "wireguard-go", "wg", "nft", "ip", "tc", "ping")]

CLIENT_PLUGINS = ("random nonce openssl pem pkcs1 pkcs8 x509 revocation constraints pubkey gmp aes sha1 "
                  "sha2 hmac kdf curve25519 kernel-libipsec kernel-netlink socket-default vici attr "
                  "eap-identity eap-mschapv2")


def filelog(path):
    return f"""  filelog {{
    test {{
      path = {path}
      time_format = %H:%M:%S
      ike_name = yes
      flush_line = yes
      default = 1
      ike = 2
      cfg = 2
    }}
  }}"""


def server_strongswan_conf(tmp, vici_socket, snippet_dir):
    """Like Debian's /etc/strongswan.conf, with the panel's strongswan.d snippets from a temp folder."""
    return f"""charon {{
  load_modular = yes
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
{filelog(tmp / "charon-server.log")}
}}
include {snippet_dir}/*.conf
"""


def client_strongswan_conf(tmp, name, vici_socket):
    return f"""charon {{
  load = {CLIENT_PLUGINS}
  install_routes = yes
  install_virtual_ip = yes
  plugins {{
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
{filelog(tmp / f"charon-{name}.log")}
}}
"""


def start_charon(ns, conf_path, vici_socket):
    process = ns.popen(["env", f"STRONGSWAN_CONF={conf_path}", "charon-systemd"])
    assert wait_until(lambda: _answers(vici_socket), timeout=15), f"charon in {ns.name} did not start"
    return process


def _answers(path):
    try:
        session = vici_session(path)
    except OSError:
        return False
    session.version()
    return True


def vici_session(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(str(path))
    return vici.Session(sock)


def stop(process):
    process.terminate()
    process.wait(timeout=10)


class RoadWarrior:
    """A strongSwan client set up from a downloaded .sswan profile and a typed password."""

    def __init__(self, ns, tmp, name, sswan_bytes, password, send_username_as_id=False):
        self.ns, self.name = ns, name
        self.socket = tmp / f"{name}.vici"
        conf = tmp / f"{name}-strongswan.conf"
        conf.write_text(client_strongswan_conf(tmp, name, self.socket))
        self.process = start_charon(ns, conf, self.socket)
        self.profile = json.loads(sswan_bytes)
        self.send_username_as_id = send_username_as_id
        self.set_password(password)
        self.load()

    def session(self):
        return vici_session(self.socket)

    def load(self):
        profile = self.profile
        ca_pem = pki.load_cert(base64.b64decode(profile["remote"]["cert"]))
        from cryptography.hazmat.primitives import serialization
        local = {"auth": "eap-mschapv2", "eap_id": profile["local"]["eap_id"]}
        if self.send_username_as_id:
            local["id"] = profile["local"]["eap_id"]
        conn = {
            "version": "2",
            "remote_addrs": [profile["remote"]["addr"]],
            "vips": ["0.0.0.0"],
            "proposals": [profile["ike-proposal"]],
            "local": local,
            "remote": {"auth": "pubkey", "id": profile["remote"]["id"],
                       "cacerts": [ca_pem.public_bytes(serialization.Encoding.PEM)]},
            "children": {"home": {"remote_ts": ["0.0.0.0/0"], "esp_proposals": [profile["esp-proposal"]]}},
        }
        self.session().load_conn({"home": conn})

    def use_proposals(self, ike, esp):
        """What another platform would offer, in place of the profile's."""
        self.profile = dict(self.profile, **{"ike-proposal": ike, "esp-proposal": esp})
        self.load()

    def set_password(self, password):
        self.session().load_shared({"id": "mine", "type": "EAP", "data": password,
                                    "owners": [self.profile["local"]["eap_id"]]})

    def connect(self):
        """Returns seconds taken; raises vici CommandException when refused."""
        started = time.monotonic()
        list(self.session().initiate({"child": "home", "timeout": 20000}))
        return time.monotonic() - started

    def try_connect(self):
        try:
            self.connect()
            return True
        except vici.exception.CommandException:
            return False

    def virtual_ip(self):
        for entry in self.session().list_sas():
            for ike in entry.values():
                if ike.get("state") == b"ESTABLISHED":
                    return [ip.decode() for ip in ike.get("local-vips", [])]
        return []

    def established(self):
        return bool(self.virtual_ip())

    def disconnect(self):
        list(self.session().terminate({"ike": "home", "timeout": 5000, "force": "yes"}))

    def ping(self, address, count=2):
        return self.ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "3", address], check=False).returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ikev2")
    tmp.chmod(0o700)
    server, ns_a, ns_b, wan = Netns("pqis"), Netns("pqia"), Netns("pqib"), Netns("pqiw")
    db = None
    try:
        veth(server, "10.99.1.1/24", ns_a, "10.99.1.2/24")
        veth(server, "10.99.2.1/24", ns_b, "10.99.2.2/24")
        wan_dev, _ = veth(server, "10.99.3.1/24", wan, "10.99.3.2/24")
        # everyone dials the server's public address, 10.99.1.1
        ns_b.run(["ip", "route", "add", "10.99.1.1/32", "via", "10.99.2.1"])
        db = database.connect(tmp / "panel.sqlite3")
        settings = settings_module.load(
            environ={}, INSTANCE_DIR=str(tmp), NETNS=server.name, WG_CONF_DIR=str(tmp / "wireguard"),
            SWANCTL_DIR=str(tmp / "swanctl"), VICI_SOCKET=str(tmp / "server.vici"),
            STRONGSWAN_CONF_DIR=str(tmp / "strongswan.d"), NFT_TABLE="pq" + secrets.token_hex(4))
        ctx = Context(db, settings, Runner(netns=server.name))

        # What an admin does in the panel: certificates, an interface with IKEv2, clients
        pki.generate_ca(db, "Test VPN CA", "puqvpn tests", key_type="ecdsa-p256")
        pki.generate_server(db, "vpn.puqvpn.test", "10.99.1.1")
        interface = interfaces_service.create(db, {
            "name": f"wg{secrets.randbelow(90000) + 10000}", "address": "10.8.0.1/24",
            "listen_port": str(52000 + secrets.randbelow(1000)), "endpoint": "10.99.1.1",
            "nat": "1", "ext_device": wan_dev, "dns": "10.8.0.1", "ikev2_enabled": "1"})
        carol = clients_service.create(db, {"interface": interface["id"], "name": "carol"})
        alice = clients_service.create(db, {"interface": interface["id"], "name": "alice"})
        bob = clients_service.create(db, {"interface": interface["id"], "name": "bob"})

        # The backend snippet first (charon reads it at start), then charon, then apply
        assert strongswan.write_backend_snippet(ctx)
        server_conf = tmp / "server-strongswan.conf"
        server_conf.write_text(server_strongswan_conf(tmp, tmp / "server.vici", tmp / "strongswan.d"))
        charon = start_charon(server, server_conf, tmp / "server.vici")
        apply.interface_changed(ctx, interface["id"])

        # carol uses WireGuard only, from the wan side
        wg_client = f"wg{secrets.randbelow(90000) + 10000}"
        wan.run(["wireguard-go", wg_client])
        psk = tmp / "carol.psk"
        psk.touch(mode=0o600)
        psk.write_text(carol["preshared_key"] + "\n")
        # key and preshared key in one go, so the first handshake already uses both
        wan.run(["wg", "set", wg_client, "private-key", "/dev/stdin", "peer", interface["public_key"],
                 "preshared-key", str(psk), "endpoint", f"10.99.3.1:{interface['listen_port']}",
                 "allowed-ips", "10.8.0.0/24", "persistent-keepalive", "5"], input=carol["private_key"] + "\n")
        wan.run(["ip", "addr", "add", f"{carol['ip']}/32", "dev", wg_client])
        wan.run(["ip", "link", "set", wg_client, "up"])
        wan.run(["ip", "route", "add", "10.8.0.0/24", "dev", wg_client])

        def download(client):
            row = clients_service.get(db, client["id"])
            return profiles.build(db, "sswan", interface, row, strongswan.get_options(db))[2]

        road_a = RoadWarrior(ns_a, tmp, "alice", download(alice), alice["password"])
        road_b = RoadWarrior(ns_b, tmp, "bob", download(bob), bob["password"], send_username_as_id=True)
        yield {"ctx": ctx, "db": db, "tmp": tmp, "server": server, "wan": wan, "charon": charon,
               "server_conf": server_conf, "interface": interface, "alice": alice, "bob": bob,
               "carol": carol, "wg_client": wg_client, "a": road_a, "b": road_b}
    finally:
        for ns in (ns_a, ns_b, wan, server):
            ns.close()
        if db is not None:
            db.conn.close()


def fresh(lab, name):
    return clients_service.get(lab["db"], lab[name]["id"])


def test_the_backend_is_libipsec_and_charon_answers(lab):
    status = strongswan.charon_status(lab["ctx"])
    assert status["up"] and status["daemon"] == "charon-systemd", status
    assert status["backend"] == "libipsec"


def test_clients_connect_with_eap_mschapv2_and_get_their_wireguard_ip(lab):
    a, b = lab["a"], lab["b"]
    seconds_a = a.connect()
    seconds_b = b.connect()
    print(f"connect times: alice (IKE id = IP) {seconds_a * 1000:.0f} ms, "
          f"bob (IKE id = username) {seconds_b * 1000:.0f} ms")
    assert a.virtual_ip() == [lab["alice"]["ip"]]
    assert b.virtual_ip() == [lab["bob"]["ip"]]
    assert a.ping("10.8.0.1") and b.ping("10.8.0.1")
    # the wan host has no route to 10.8.0.0/24: its replies arrive only through the NAT
    assert a.ping("10.99.3.2")
    # carol's WireGuard tunnel works beside them
    assert lab["wan"].run(["ping", "-c", "2", "-W", "3", "10.8.0.1"], check=False).returncode == 0


@pytest.mark.parametrize("platform", ["iOS/macOS profile", "Windows script", "Windows defaults",
                                      "iOS/macOS by hand"])
def test_each_platforms_proposals_are_accepted(lab, platform):
    options = strongswan.get_options(lab["db"])
    ike, esp = {
        "iOS/macOS profile": profiles.apple_parameters(options)[:2],
        "Windows script": profiles.windows_parameters(options)[:2],
        "Windows defaults": ("aes256-sha1-modp1024", "aes256-sha1"),
        "iOS/macOS by hand": ("aes256-sha256-modp2048", "aes256-sha256"),
    }[platform]
    b = lab["b"]
    b.disconnect()
    b.use_proposals(ike, esp)
    try:
        assert b.try_connect(), f"{platform}: {ike} / {esp} refused"
        assert b.virtual_ip() == [lab["bob"]["ip"]] and b.ping("10.8.0.1", count=1)
    finally:
        b.disconnect()
        b.use_proposals(options["ike_proposals"][0], options["esp_proposals"][0])
        assert b.try_connect()


def test_the_sessions_list_shows_user_address_ip_and_bytes(lab):
    sessions = {s["user"]: s for s in strongswan.list_sessions(lab["ctx"])}
    assert set(sessions) == {"alice", "bob"}
    alice = sessions["alice"]
    assert alice["client_id"] == lab["alice"]["id"]
    assert alice["remote_addr"] == "10.99.1.2"
    assert alice["virtual_ips"] == [lab["alice"]["ip"]]
    assert alice["bytes_in"] > 0 and alice["bytes_out"] > 0
    assert abs(alice["connected_since"] - time.time()) < 120


def test_a_wrong_password_is_refused(lab):
    a = lab["a"]
    a.disconnect()
    a.set_password("not-the-password-1")
    assert not a.try_connect()
    a.set_password(fresh(lab, "alice")["password"])
    assert a.try_connect()


def test_suspending_drops_only_that_client_and_blocks_reconnects(lab):
    ctx, a, b = lab["ctx"], lab["a"], lab["b"]
    assert a.established() and b.established()
    clients_service.suspend(lab["db"], lab["alice"]["id"])
    apply.client_changed(ctx, lab["alice"]["id"])
    assert wait_until(lambda: not a.established(), timeout=10)
    sessions = strongswan.list_sessions(ctx)
    assert [s["user"] for s in sessions] == ["bob"], sessions
    assert not a.try_connect()
    assert b.established() and b.ping("10.8.0.1")

    clients_service.resume(lab["db"], lab["alice"]["id"])
    apply.client_changed(ctx, lab["alice"]["id"])
    assert a.try_connect()
    assert a.virtual_ip() == [lab["alice"]["ip"]] and a.ping("10.8.0.1")


def test_a_password_change_takes_effect_without_restarting_charon(lab):
    ctx, a = lab["ctx"], lab["a"]
    bob_sa = [s["ike_id"] for s in strongswan.list_sessions(ctx) if s["user"] == "bob"]
    old = fresh(lab, "alice")["password"]
    new = clients_service.set_password(lab["db"], lab["alice"]["id"])
    apply.client_changed(ctx, lab["alice"]["id"])
    a.disconnect()
    assert not a.try_connect()          # the old password no longer works
    a.set_password(new)
    assert a.try_connect()
    assert a.virtual_ip() == [lab["alice"]["ip"]]
    # same daemon, and bob's session was never interrupted
    assert lab["charon"].poll() is None
    assert [s["ike_id"] for s in strongswan.list_sessions(ctx) if s["user"] == "bob"] == bob_sa != []
    assert old != new


def tc_ids(server, device):
    """{'classes': class minors, 'filters': (flowid minor, fh handle) pairs} on one device."""
    classes = server.run(["tc", "class", "show", "dev", device]).stdout
    filters = server.run(["tc", "filter", "show", "dev", device, "parent", "1:"]).stdout
    return {"classes": {int(m, 16) for m in re.findall(r"^class htb 1:([0-9a-f]+) ", classes, re.M)},
            "filters": {(int(minor, 16), handle) for handle, minor in
                        re.findall(r"fh ([0-9a-f]+:[0-9a-f]+:[0-9a-f]+) .*?flowid 1:([0-9a-f]+)", filters)}}


def shaped_minors(lab):
    """Class minors on each device that shapes this interface's clients: wg, ipsec0 and their IFBs."""
    server, interface = lab["server"], lab["interface"]
    devices = [interface["name"], lab["ctx"].settings["IPSEC_DEVICE"]]
    devices += [shaping.ifb_name(device) for device in devices]
    return {device: tc_ids(server, device) for device in devices}


def test_deleting_a_client_removes_its_connection_secret_and_limits(lab):
    ctx, db, interface = lab["ctx"], lab["db"], lab["interface"]
    ipsec, wg = ctx.settings["IPSEC_DEVICE"], interface["name"]
    dave = clients_service.create(db, {"interface": interface["id"], "name": "dave",
                                       "down_mbit": "8", "up_mbit": "4"})
    apply.client_changed(ctx, dave["id"])
    clients_service.update(db, lab["bob"]["id"], {"down_mbit": "20", "up_mbit": "10"})
    apply.client_changed(ctx, lab["bob"]["id"])
    session = vici_session(lab["tmp"] / "server.vici")
    names = strongswan.names(dave["id"])
    assert names["conn"] in [c.decode() for c in session.get_conns()["conns"]]
    # On ipsec0 classes follow the client id; on the /24 wg device, the address.
    minor = {wg: shaping.wg_device(interface).minor(dave), ipsec: dave["id"]}
    bob_minor = {wg: shaping.wg_device(interface).minor(lab["bob"]), ipsec: lab["bob"]["id"]}
    before = shaped_minors(lab)
    for device, ids in before.items():
        tunnel = ipsec if ipsec in device else wg
        assert {minor[tunnel], bob_minor[tunnel]} <= ids["classes"], device
        assert {m for m, _handle in ids["filters"]} >= {minor[tunnel], bob_minor[tunnel]}, device

    removed = clients_service.delete(db, dave["id"])
    apply.client_removed(ctx, removed)

    assert names["conn"] not in [c.decode() for c in session.get_conns()["conns"]]
    assert names["secret"] not in [k.decode() for k in session.get_shared()["keys"]]
    after = shaped_minors(lab)
    for device, ids in after.items():
        tunnel = ipsec if ipsec in device else wg
        assert ids["classes"] == before[device]["classes"] - {minor[tunnel]}, device
        assert ids["filters"] == {f for f in before[device]["filters"] if f[0] != minor[tunnel]}, device
        assert bob_minor[tunnel] in ids["classes"], device
    assert not apply.pending(ctx)
    assert lab["a"].established() and lab["b"].established()


def test_with_charon_stopped_the_panel_says_so_and_wireguard_keeps_working(lab):
    ctx, server = lab["ctx"], lab["server"]
    lab["a"].disconnect()
    lab["b"].disconnect()
    stop(lab["charon"])
    status = strongswan.charon_status(ctx)
    assert not status["up"] and "not running" in status["reason"]

    # a client change still reaches WireGuard; only the strongswan backend fails
    _old, erin = None, clients_service.create(lab["db"], {"interface": lab["interface"]["id"], "name": "erin"})
    with pytest.raises(apply.ApplyError) as error:
        apply.client_changed(ctx, erin["id"])
    assert {backend for backend, _name, _message in error.value.failures} == {"strongswan"}
    assert "not running" in str(error.value)
    dump = server.run(["wg", "show", lab["interface"]["name"], "allowed-ips"]).stdout
    assert f"{erin['ip']}/32" in dump
    assert lab["wan"].run(["ping", "-c", "2", "-W", "3", "10.8.0.1"], check=False).returncode == 0

    # after a reboot, charon comes back with what the files say (as swanctl --load-all runs it)
    lab["charon"] = start_charon(server, lab["server_conf"], lab["tmp"] / "server.vici")
    server.run(["env", f"SWANCTL_DIR={lab['tmp'] / 'swanctl'}", "swanctl", "--load-all", "--noprompt",
                "--uri", f"unix://{lab['tmp'] / 'server.vici'}"])
    assert lab["a"].try_connect()
    assert lab["a"].virtual_ip() == [lab["alice"]["ip"]] and lab["a"].ping("10.8.0.1")
    # the new charon made ipsec0 afresh, without bob's classes; the panel's reconcile puts
    # them back (tc on the IFB and ipsec0 rebuilt together) and clears the pending mark
    ipsec = ctx.settings["IPSEC_DEVICE"]
    assert lab["bob"]["id"] not in tc_ids(server, ipsec)["classes"]
    apply.reconcile(ctx)
    assert not apply.pending(ctx)
    for device in (ipsec, shaping.ifb_name(ipsec)):
        assert lab["bob"]["id"] in tc_ids(server, device)["classes"], device

"""Importing an existing wg-quick server: parsing, the database, and a live take-over."""

import contextlib
import secrets
import time

import pytest

from puqvpn.db import connect
from puqvpn.services import importer, keys, wgconfig
from puqvpn.services.importer import ConfigImportError
from tests.netns import Netns, requires_root_tools, veth, wait_until

SERVER_PRIVATE, SERVER_PUBLIC = keys.generate_keypair()
PEERS = [keys.generate_keypair() for _ in range(3)]
PSK = keys.generate_preshared_key()


def wg0_conf(peers=PEERS, extra_interface="", extra_peer=""):
    """A server file in the style of the popular install scripts, three peers named three ways."""
    return f"""\
# Server
[Interface]
Address = 10.66.66.1/24, fd42:42:42::1/64
ListenPort = 51999
PrivateKey = {SERVER_PRIVATE}
MTU = 1400
PostUp = iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostDown = iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE
{extra_interface}
### Client alice
[Peer]
PublicKey = {peers[0][1]}
PresharedKey = {PSK}
AllowedIPs = 10.66.66.2/32, fd42:42:42::2/128

### begin bob ###
[Peer]
PublicKey = {peers[1][1]}
AllowedIPs = 10.66.66.3/32   # bob's laptop
{extra_peer}
### end bob ###

[Peer]
PublicKey = {peers[2][1]}
AllowedIPs = 10.66.66.9/32
"""


def test_parse_takes_keys_port_addresses_and_names_as_they_are():
    parsed = importer.parse(wg0_conf())
    iface = parsed["interface"]
    assert iface["private_key"] == SERVER_PRIVATE
    assert iface["public_key"] == SERVER_PUBLIC
    assert iface["listen_port"] == 51999
    assert (iface["address"], iface["address6"]) == ("10.66.66.1/24", "fd42:42:42::1/64")
    assert iface["mtu"] == 1400
    assert iface["ext_device"] == "eth0"  # found in the MASQUERADE PostUp
    assert [p["name"] for p in parsed["peers"]] == ["alice", "bob", None]
    assert [p["public_key"] for p in parsed["peers"]] == [pub for _priv, pub in PEERS]
    assert parsed["peers"][0]["preshared_key"] == PSK
    assert parsed["peers"][1]["preshared_key"] is None
    assert [(p["ip"], p["ip6"]) for p in parsed["peers"]] == [
        ("10.66.66.2", "fd42:42:42::2"), ("10.66.66.3", None), ("10.66.66.9", None)]
    assert any("PostDown, PostUp not imported" in note for note in parsed["notes"])


@pytest.mark.parametrize("comments, name", [
    ("# BEGIN_PEER carol", "carol"),                                   # Nyr's wireguard-install
    ("# ID: 1b2c\n# Name: carol\n# Email: c@example.com", "carol"),   # wireguard-ui
    ("# Client: carol (f81d4fae)", "carol"),                           # wg-easy
    ("# carol", "carol"),                                              # by hand
    ("", None),
])
def test_peer_names_from_the_comments_installers_write(comments, name):
    text = f"""[Interface]
Address = 10.9.0.1/24
ListenPort = 51820
PrivateKey = {SERVER_PRIVATE}

{comments}
[Peer]
PublicKey = {PEERS[0][1]}
AllowedIPs = 10.9.0.2/32
"""
    assert importer.parse(text)["peers"][0]["name"] == name


def test_a_name_written_inside_the_peer_section_counts_too():
    # The panel's own wgN.conf puts "# name" right after [Peer].
    text = wgconfig.render_server_config(
        {"name": "wg3", "address": "10.3.0.1/24", "address6": None, "listen_port": 51823,
         "private_key": SERVER_PRIVATE, "mtu": 1420},
        [{"name": "dave", "public_key": PEERS[0][1], "preshared_key": PSK, "ip": "10.3.0.2", "ip6": None,
          "suspended_reason": None}])
    peer, = importer.parse(text)["peers"]
    assert (peer["name"], peer["ip"], peer["preshared_key"]) == ("dave", "10.3.0.2", PSK)


@pytest.mark.parametrize("change, problem", [
    ({"extra_peer": "AllowedIPs = 192.168.50.0/24"}, "also routes 192.168.50.0/24"),
    ({"extra_interface": "Address = 10.77.0.1/24"}, "one IPv4 and one IPv6 address"),
    ({"extra_interface": "Bogus = 1"}, "unknown key Bogus"),
    ({"peers": [PEERS[0], PEERS[0], PEERS[2]]}, "the same PublicKey appears twice"),
    ({"peers": [PEERS[0], ("", "not-a-key"), PEERS[2]]}, "PublicKey: not a base64 WireGuard key"),
])
def test_anything_the_panel_cannot_keep_exactly_is_refused_with_its_line(change, problem):
    with pytest.raises(ConfigImportError) as refused:
        importer.parse(wg0_conf(**change), source="wg0.conf")
    assert any(problem in p for p in refused.value.problems), refused.value.problems
    assert any(p.startswith("wg0.conf:") for p in refused.value.problems)


def test_a_peer_outside_the_pool_and_a_missing_port_are_both_reported():
    text = f"[Interface]\nAddress = 10.9.0.1/24\nPrivateKey = {SERVER_PRIVATE}\n\n" \
           f"[Peer]\nPublicKey = {PEERS[0][1]}\nAllowedIPs = 10.10.0.2/32\n"
    with pytest.raises(ConfigImportError) as refused:
        importer.parse(text)
    assert len(refused.value.problems) == 2
    assert "no ListenPort" in refused.value.problems[0]
    assert "10.10.0.2 is not a client address inside 10.9.0.0/24" in refused.value.problems[1]


def test_only_wgN_files_can_be_imported(tmp_path):
    path = tmp_path / "office.conf"
    path.write_text(wg0_conf())
    with pytest.raises(ConfigImportError, match="the panel names interfaces wgN"):
        importer.parse_file(path)


# ------------------------------------------------------------- the database

@pytest.fixture
def db(tmp_path):
    db = connect(tmp_path / "puqvpn.sqlite3")
    yield db
    db.conn.close()


def test_import_creates_the_interface_and_clients_with_the_keys_they_have(db, tmp_path):
    path = tmp_path / "wg0.conf"
    path.write_text(wg0_conf())
    result = importer.import_parsed(db, importer.parse_file(path), endpoint="vpn.example.com")

    iface = result["interface"]
    assert (iface["name"], iface["private_key"], iface["public_key"], iface["listen_port"]) == (
        "wg0", SERVER_PRIVATE, SERVER_PUBLIC, 51999)
    assert (iface["endpoint"], iface["ext_device"], iface["mtu"]) == ("vpn.example.com", "eth0", 1400)
    rows = {c["name"]: c for c in result["clients"]}
    assert set(rows) == {"alice", "bob", "wg0-10-66-66-9"}
    assert [rows[n]["public_key"] for n in ("alice", "bob", "wg0-10-66-66-9")] == [p for _k, p in PEERS]
    assert all(c["private_key"] is None for c in rows.values())
    assert (rows["alice"]["preshared_key"], rows["bob"]["preshared_key"]) == (PSK, None)
    assert (rows["alice"]["ip6"], rows["bob"]["ip6"]) == ("fd42:42:42::2", None)

    # The server file the panel writes carries every peer exactly as before.
    again = importer.parse(wgconfig.render_server_config(iface, result["clients"]))
    assert sorted((p["public_key"], p["preshared_key"], p["ip"], p["ip6"]) for p in again["peers"]) == sorted(
        (c["public_key"], c["preshared_key"], c["ip"], c["ip6"]) for c in result["clients"])
    # A profile cannot be made without the private key, and says so.
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        wgconfig.render_client_config(iface, rows["bob"])


def test_names_already_taken_get_a_suffix(db):
    parsed = importer.parse(wg0_conf())
    parsed["interface"]["name"] = "wg0"
    other = importer.parse(wg0_conf(peers=[keys.generate_keypair() for _ in range(3)])
                           .replace("10.66.66.", "10.67.66.").replace("fd42:42:42:", "fd42:42:43:")
                           .replace("51999", "51998").replace(SERVER_PRIVATE, keys.generate_private_key()))
    other["interface"]["name"] = "wg1"
    importer.import_parsed(db, parsed, endpoint="vpn.example.com")
    second = importer.import_parsed(db, other, endpoint="vpn.example.com")
    assert sorted(c["name"] for c in second["clients"]) == ["alice-2", "bob-2", "wg1-10-67-66-9"]


def test_a_refused_import_writes_nothing(db):
    parsed = importer.parse(wg0_conf())
    parsed["interface"]["name"] = "wg0"
    importer.import_parsed(db, parsed, endpoint="vpn.example.com")
    before = (db.execute("SELECT count(*) FROM interfaces").fetchone()[0],
              db.execute("SELECT count(*) FROM clients").fetchone()[0])
    # Same peers again under another name and port: the keys are already known.
    parsed["interface"].update(name="wg5", listen_port=51000, address="10.80.0.1/24", address6=None)
    for peer in parsed["peers"]:
        peer["ip"] = peer["ip"].replace("10.66.66.", "10.80.0.")
        peer["ip6"] = None
    with pytest.raises(ConfigImportError, match="already has a client with the key"):
        importer.import_parsed(db, parsed, endpoint="vpn.example.com")
    assert (db.execute("SELECT count(*) FROM interfaces").fetchone()[0],
            db.execute("SELECT count(*) FROM clients").fetchone()[0]) == before


# ------------------------------------------------------- a live take-over

def live_state(ns, ifname):
    """Per peer: (latest handshake, rx, tx) as the server's wg reports them."""
    lines = ns.run(["wg", "show", ifname, "dump"]).stdout.splitlines()[1:]
    return {f[0]: (int(f[4]), int(f[5]), int(f[6])) for f in (line.split("\t") for line in lines)}


def wireguard_go_pid(ns, ifname):
    for pid in ns.pids():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except FileNotFoundError:
            continue
        if cmdline[0].endswith(b"wireguard-go") and ifname.encode() in cmdline:
            return pid
    return None


@pytest.mark.netns
@pytest.mark.slow
@requires_root_tools("wg", "wireguard-go", "ip", "nft", "tc")
def test_a_live_wg_quick_server_comes_under_the_panel_without_a_handshake_reset(tmp_path):
    from puqvpn import settings as settings_module
    from puqvpn.services import apply
    from puqvpn.services.system import Context

    ifname = f"wg{secrets.randbelow(90000) + 10000}"
    server_private, _ = keys.generate_keypair()
    peers = [keys.generate_keypair() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(Netns("pqimp"))
        cli = [stack.enter_context(Netns("pqimc")) for _ in peers]
        uplinks = [veth(srv, f"10.210.{n}.1/24", c, f"10.210.{n}.2/24") for n, c in enumerate(cli)]

        conf = tmp_path / f"{ifname}.conf"
        conf.write_text(f"""\
[Interface]
Address = 10.211.0.1/24
ListenPort = 51777
PrivateKey = {server_private}
MTU = 1420
PostUp = iptables -t nat -A POSTROUTING -o {uplinks[0][0]} -j MASQUERADE

### Client laptop
[Peer]
PublicKey = {peers[0][1]}
PresharedKey = {PSK}
AllowedIPs = 10.211.0.2/32

### Client phone
[Peer]
PublicKey = {peers[1][1]}
AllowedIPs = 10.211.0.3/32

### Client router
[Peer]
PublicKey = {peers[2][1]}
AllowedIPs = 10.211.0.4/32
""")
        # The server as wg-quick brings it up: wireguard-go, `wg setconf` of the
        # stripped file, the address, link up.  Nothing of it is the panel's.
        srv.popen(["wireguard-go", "-f", ifname])
        assert wait_until(lambda: srv.run(["wg", "show", ifname], check=False).returncode == 0)
        stripped = "\n".join(line for line in conf.read_text().splitlines()
                             if not line.startswith(("Address", "MTU", "PostUp")))
        srv.run(["wg", "setconf", ifname, "/dev/stdin"], input=stripped)
        srv.run(["ip", "address", "add", "10.211.0.1/24", "dev", ifname])
        srv.run(["ip", "link", "set", ifname, "mtu", "1420", "up"])

        # Three clients, each in its own namespace, each with its own key.
        for n, (ns, (private, _public)) in enumerate(zip(cli, peers)):
            client_if = f"wg{secrets.randbelow(90000) + 10000}"
            ns.popen(["wireguard-go", "-f", client_if])
            assert wait_until(lambda: ns.run(["wg", "show", client_if], check=False).returncode == 0)
            ns.run(["wg", "setconf", client_if, "/dev/stdin"], input=(
                f"[Interface]\nPrivateKey = {private}\n\n[Peer]\nPublicKey = {keys.public_key(server_private)}\n"
                + (f"PresharedKey = {PSK}\n" if n == 0 else "")
                + f"Endpoint = 10.210.{n}.1:51777\nAllowedIPs = 10.211.0.0/24\n"))
            ns.run(["ip", "address", "add", f"10.211.0.{n + 2}/32", "dev", client_if])
            ns.run(["ip", "link", "set", client_if, "up"])
            ns.run(["ip", "route", "add", "10.211.0.0/24", "dev", client_if])
            ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.211.0.1"])
        before = live_state(srv, ifname)
        assert len(before) == 3 and all(handshake > 0 for handshake, _rx, _tx in before.values())
        daemon = wireguard_go_pid(srv, ifname)
        time.sleep(1.1)  # handshake times are whole seconds: a new one must show

        settings = settings_module.load(
            config_file=str(tmp_path / "none.conf"), environ={}, INSTANCE_DIR=str(tmp_path / "data"),
            NETNS=srv.name, WG_CONF_DIR=str(tmp_path / "etc-wireguard"), SWANCTL_DIR=str(tmp_path / "swanctl"),
            NFT_TABLE=f"pq{secrets.token_hex(4)}")
        db = connect(settings["DATABASE"])
        stack.callback(db.conn.close)
        result = importer.import_parsed(db, importer.parse_file(conf), endpoint="vpn.example.com")
        assert [c["name"] for c in result["clients"]] == ["laptop", "phone", "router"]
        report = apply.interface_changed(Context(db, settings), result["interface"]["id"])

        # The panel found nothing of WireGuard's to change: same daemon, same
        # sessions (no new handshake), counters running on from where they were.
        # (Writing its own wgN.conf and turning on forwarding are all it did.)
        touched = [text for backend, text in report.changes
                   if backend == "wireguard" and not text.endswith(" written") and "sysctl" not in text]
        assert touched == [], report.lines()
        assert wireguard_go_pid(srv, ifname) == daemon
        for n, ns in enumerate(cli):
            ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.211.0.1"])
        after = live_state(srv, ifname)
        for public_key, (handshake, rx, tx) in before.items():
            assert after[public_key][0] == handshake, "a peer had to handshake again"
            assert after[public_key][1] > rx and after[public_key][2] > tx
        # It is the panel's now: its own file, its firewall table, no pending mark.
        assert f"PublicKey = {peers[2][1]}" in (tmp_path / "etc-wireguard" / f"{ifname}.conf").read_text()
        assert srv.run(["nft", "list", "table", "inet", settings["NFT_TABLE"]]).returncode == 0
        assert db.execute("SELECT apply_error FROM interfaces").fetchone()[0] is None

"""Real WireGuard tunnels driven through the panel.

    alice ns ──veth── server ns ──veth── wan ns
    bob ns   ──veth──┘

The panel (the Flask app, with NETNS set so every command it runs happens
inside the server namespace) creates an interface and two clients.  Each
client's .conf is downloaded from the panel as a user would and brought up
with ``wg-quick`` (wireguard-go) in the client's own namespace.  Interface
names are random: wireguard-go's control sockets in /var/run/wireguard are
shared by every namespace, and other test runs may be going on.

The tests then use the tunnels as users would: the gateway over IPv4 and
IPv6, the wan namespace through NAT, suspend and resume, client-to-client
on and off, a port forward from the wan side, the diagnostics page, and a
panel killed half-way through a change followed by reconcile and a reboot.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import apply, clients, interfaces, wireguard
from puqvpn.services.system import Context

from .conftest import Auth
from .netns import Netns, requires_root_tools, unique_name, veth, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow,
              requires_root_tools("wg", "wg-quick", "wireguard-go", "nft", "ip", "ping")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAN = "198.51.100.2"


def ping(ns, address, count=1):
    family = ["-6"] if ":" in address else []
    return ns.run(["ping", *family, "-c", str(count), "-i", "0.2", "-W", "1", address], check=False).returncode == 0


class Lab:
    """The namespaces, the panel, and the two clients' tunnels."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.namespaces = []
        self.db = None
        try:
            self.build()
        except BaseException:
            self.close()
            raise

    def build(self):
        tmp_path = self.tmp
        self.server = self.ns("pqsrv")
        self.wan = self.ns("pqwan")
        self.alice_ns = self.ns("pqal")
        self.bob_ns = self.ns("pqbo")
        veth(self.server, "198.51.100.1/24", self.wan, f"{WAN}/24")
        veth(self.server, "192.0.2.1/30", self.alice_ns, "192.0.2.2/30")
        veth(self.server, "192.0.2.5/30", self.bob_ns, "192.0.2.6/30")
        self.server.run(["ip", "route", "add", "default", "via", WAN])
        # Both clients dial the same endpoint, the server's address on alice's link.
        self.bob_ns.run(["ip", "route", "add", "192.0.2.1/32", "via", "192.0.2.5"])

        self.settings = dict(
            INSTANCE_DIR=str(tmp_path / "instance"), NETNS=self.server.name, SYSTEM_APPLY="1",
            BACKGROUND_JOBS="0", WG_CONF_DIR=str(tmp_path / "wireguard"), SWANCTL_DIR=str(tmp_path / "swanctl"),
            STRONGSWAN_CONF_DIR=str(tmp_path / "strongswan.d"), VICI_SOCKET=str(tmp_path / "charon.vici"),
            BACKUP_DIR=str(tmp_path / "backups"), COMMAND_TIMEOUT="10",
        )
        self.app = create_app(**self.settings)
        if "portforwards" not in self.app.blueprints:
            from puqvpn.views import portforwards
            self.app.register_blueprint(portforwards.bp)    # until puqvpn.BLUEPRINTS lists it
        self.app.config["TESTING"] = True
        self.app.config["WTF_CSRF_ENABLED"] = True
        self.db = connect(self.app.config["PUQVPN"]["DATABASE"])
        self.auth = Auth(self.app.test_client(), self.db)
        self.auth.login()

    def ns(self, prefix):
        ns = Netns(prefix)
        self.namespaces.append(ns)
        return ns

    def context(self):
        return Context(self.db, self.app.config["PUQVPN"])

    # ---------------------------------------------------------------- through the panel
    def post(self, path, data=None):
        response = self.auth.post(path, data=data or {})
        assert response.status_code in (200, 302), (path, response.status_code, response.get_data(as_text=True)[:500])
        return response

    def create_interface(self):
        self.ifname = f"wg{int.from_bytes(os.urandom(3), 'big') % 90000 + 10000}"
        self.post("/interfaces/new", {
            "name": self.ifname, "address": "10.77.0.1/24", "address6": "fd77:77::1/64",
            "listen_port": "51820", "endpoint": "192.0.2.1", "dns": "", "mtu": "1420", "keepalive": "5",
            "allowed_ips": "0.0.0.0/0, ::/0", "default_down_mbit": "0", "default_up_mbit": "0",
            "nat": "on", "enabled": "on"})
        self.interface = interfaces.get(self.db, self.ifname)
        assert self.interface is not None
        self.assert_applied()
        return self.interface

    def create_client(self, name):
        self.post("/clients/new", {"interface": str(self.interface["id"]), "name": name})
        client = clients.get(self.db, name)
        self.assert_applied()
        return client

    def set_client_to_client(self, allowed):
        form = {k: ("" if v is None else str(v)) for k, v in interfaces.get(self.db, self.interface["id"]).items()}
        for flag in ("nat", "client_to_client", "ikev2_enabled", "conn_logging", "enabled"):
            form.pop(flag)
            if flag in ("nat", "enabled") or (flag == "client_to_client" and allowed):
                form[flag] = "on"
        self.post(f"/interfaces/{self.interface['id']}/edit", form)
        assert interfaces.get(self.db, self.interface["id"])["client_to_client"] == int(allowed)
        self.assert_applied()

    def assert_applied(self):
        rows = list(self.db.query("SELECT name, apply_error FROM interfaces WHERE apply_error IS NOT NULL"))
        assert rows == [], rows

    def download_config(self, client):
        response = self.auth.client.get(f"/clients/{client['id']}/wireguard.conf")
        assert response.status_code == 200
        assert "attachment" in response.headers["Content-Disposition"]
        return response.get_data(as_text=True)

    def tunnel_up(self, ns, client):
        """Save the downloaded .conf under a unique tunnel name and `wg-quick up` it in ns."""
        name = unique_name("pqc")
        folder = self.tmp / name
        folder.mkdir(mode=0o700)
        path = folder / f"{name}.conf"
        path.write_text(self.download_config(client))
        path.chmod(0o600)
        ns.run(["env", "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go", "wg-quick", "up", str(path)], timeout=30)
        return name

    def peer(self, client):
        return wireguard.dump(self.context(), self.ifname)[client["public_key"]]

    def close(self):
        wireguard.flush_config_writes()
        if self.db is not None:
            self.db.conn.close()
        for ns in reversed(self.namespaces):
            ns.close()


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        lab.create_interface()
        lab.alice = lab.create_client("alice")
        lab.bob = lab.create_client("bob")
        lab.alice_tunnel = lab.tunnel_up(lab.alice_ns, lab.alice)
        lab.bob_tunnel = lab.tunnel_up(lab.bob_ns, lab.bob)
        yield lab
    finally:
        lab.close()
        for ns in lab.namespaces:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert ns.name not in listed, f"namespace {ns.name} was left behind"


def test_tunnels_work_and_suspend_cuts_one_client_off_without_touching_the_other(lab):
    alice, bob = lab.alice, lab.bob
    assert ping(lab.alice_ns, "10.77.0.1", 3), "gateway over IPv4"
    assert ping(lab.alice_ns, "fd77:77::1", 3), "gateway over IPv6"
    # The wan namespace has no route back to 10.77.0.0/24: a reply proves the server's NAT.
    assert ping(lab.alice_ns, WAN, 3), "the wan namespace through NAT"
    assert ping(lab.bob_ns, "10.77.0.1", 3)

    before = lab.peer(bob)
    assert before["latest_handshake"] > 0 and before["rx"] > 0
    # What the accounting poller records from each dump.
    lab.db.execute("UPDATE clients SET endpoint = ? WHERE id = ?", [lab.peer(alice)["endpoint"], alice["id"]])

    # Suspend alice through the panel: cut off within 5 s.
    lab.post(f"/clients/{alice['id']}/suspend")
    lab.assert_applied()
    started = time.monotonic()
    assert wait_until(lambda: not ping(lab.alice_ns, "10.77.0.1"), timeout=5)
    assert time.monotonic() - started < 5
    assert not ping(lab.alice_ns, WAN)
    assert alice["public_key"] not in wireguard.dump(lab.context(), lab.ifname)

    # Bob's session was not reset: same handshake (or a newer one), counters kept and growing.
    assert ping(lab.bob_ns, "10.77.0.1", 3)
    after = lab.peer(bob)
    assert after["latest_handshake"] >= before["latest_handshake"]
    assert after["rx"] > before["rx"] and after["tx"] > before["tx"]

    # Resume: the server knows alice's last endpoint (the poller stores it) and
    # starts the handshake itself, so she is back at once.
    lab.post(f"/clients/{alice['id']}/resume")
    lab.assert_applied()
    assert alice["public_key"] in wireguard.dump(lab.context(), lab.ifname)
    started = time.monotonic()
    assert wait_until(lambda: ping(lab.alice_ns, "10.77.0.1"), timeout=5)
    assert time.monotonic() - started < 5
    assert ping(lab.alice_ns, WAN)


def test_client_to_client_traffic_follows_the_interface_setting(lab):
    lab.set_client_to_client(True)
    assert wait_until(lambda: ping(lab.alice_ns, lab.bob["ip"]), timeout=10), "alice reaches bob"
    assert ping(lab.bob_ns, lab.alice["ip"])

    lab.set_client_to_client(False)
    assert not ping(lab.alice_ns, lab.bob["ip"], 2)
    assert not ping(lab.bob_ns, lab.alice["ip"], 2)
    assert ping(lab.alice_ns, "10.77.0.1"), "each still reaches the gateway"
    assert ping(lab.bob_ns, "10.77.0.1")


def test_diagnostics_page_shows_a_healthy_interface_and_its_peers(lab):
    assert ping(lab.alice_ns, "10.77.0.1") and ping(lab.bob_ns, "10.77.0.1")
    response = lab.auth.client.get(f"/diagnostics/interfaces/{lab.interface['id']}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'class="check-fail"' not in page and 'class="check-warn"' not in page, page
    assert "IPv4 forwarding" in page and "is masqueraded" in page
    assert ">alice<" in page and ">bob<" in page and "(online)" in page
    assert "nft list table inet puqvpn" in page


FETCH = r"""
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end="")
except OSError as error:
    sys.exit(f"unreachable: {error}")
"""

# A one-line web service (http.server would look up its own name in DNS first).
SERVE = r"""
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    connection, _peer = server.accept()
    connection.recv(4096)
    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nserved by alice\n")
    connection.close()
"""


def test_a_port_forward_reaches_a_service_on_a_client(lab):
    alice = lab.alice
    lab.alice_ns.popen([sys.executable, "-c", SERVE, alice["ip"], "8000"])
    local = [sys.executable, "-c", FETCH, f"http://{alice['ip']}:8000/"]
    assert wait_until(lambda: lab.alice_ns.run(local, check=False).returncode == 0, timeout=10)
    url = "http://198.51.100.1:8081/"
    assert lab.wan.run([sys.executable, "-c", FETCH, url], check=False).returncode != 0, "closed before"

    page = f"/interfaces/{lab.interface['id']}/port-forwards/"
    lab.post(page, {"client_id": str(alice["id"]), "proto": "tcp", "ext_port": "8081", "dest_port": "8000"})
    lab.assert_applied()
    assert lab.wan.run([sys.executable, "-c", FETCH, url]).stdout == "served by alice\n"

    forward = next(lab.db.query("SELECT id FROM port_forwards WHERE ext_port = 8081"))
    lab.post(f"{page}{forward['id']}/delete")
    lab.assert_applied()
    assert lab.wan.run([sys.executable, "-c", FETCH, url], check=False).returncode != 0, "closed again"


# A panel process that commits a suspend, applies WireGuard, and then hangs in
# the next backend, where the test kills it.
KILLED_PANEL = r"""
import json, sys, time, types
from puqvpn import settings
from puqvpn.db import connect
from puqvpn.services import apply, clients
from puqvpn.services.system import Context

values = json.loads(sys.argv[1])
ctx = Context(connect(values["DATABASE"]), settings.load(config_file=values.pop("CONFIG"), environ={}, **values))
stall = types.ModuleType("puqvpn.services.stall")
def client_changed(ctx, interface, client):
    print("halfway", flush=True)
    time.sleep(120)
stall.client_changed = client_changed
sys.modules["puqvpn.services.stall"] = stall
apply.BACKENDS = ("wireguard", "stall", "firewall")
client = clients.suspend(ctx.db, int(sys.argv[2]))
apply.client_changed(ctx, client["id"])
"""


def test_reconcile_converges_after_the_panel_is_killed_mid_change(lab):
    alice = lab.alice
    settings = dict(lab.settings, DATABASE=lab.app.config["PUQVPN"]["DATABASE"],
                    CONFIG=str(lab.tmp / "absent.conf"))
    panel = subprocess.Popen([sys.executable, "-c", KILLED_PANEL, json.dumps(settings), str(alice["id"])],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = panel.stdout.readline()
        assert line.strip() == "halfway", panel.stderr.read()
    finally:
        os.kill(panel.pid, signal.SIGKILL)
        panel.wait(timeout=10)
        panel.stdout.close()
        panel.stderr.close()

    # Half applied: the peer is gone, but the firewall never heard of the suspend.
    assert clients.get(lab.db, alice["id"])["suspended_reason"] == "admin"
    assert alice["public_key"] not in wireguard.dump(lab.context(), lab.ifname)
    table = lab.server.run(["nft", "list", "set", "inet", "puqvpn", "suspended4"]).stdout
    assert alice["ip"] not in table

    # A restarted panel: its Apply button reconciles.
    lab.post("/interfaces/apply")
    lab.assert_applied()
    table = lab.server.run(["nft", "list", "set", "inet", "puqvpn", "suspended4"]).stdout
    assert re.search(rf"\b{re.escape(alice['ip'])}\b", table)
    assert not apply.reconcile(lab.context()).changed, "a second reconcile has nothing left to do"

    # A reboot wipes the live state; reconcile brings everything back.
    lab.db.execute("UPDATE clients SET endpoint = ? WHERE id = ?", [lab.peer(lab.bob)["endpoint"], lab.bob["id"]])
    lab.server.run(["ip", "link", "del", lab.ifname])
    lab.server.run(["nft", "delete", "table", "inet", "puqvpn"])
    report = apply.reconcile(lab.context())
    assert any("created" in text for _backend, text in report.changes)
    # The server calls bob back at the endpoint the poller last saw, so his
    # stale session is replaced at once.
    assert wait_until(lambda: ping(lab.bob_ns, "10.77.0.1"), timeout=5), "bob is back"
    assert ping(lab.bob_ns, WAN)
    assert not ping(lab.alice_ns, "10.77.0.1"), "alice stays suspended"

"""The resolver and the connection log on real tunnels: WireGuard clients, unbound, nftables, NFLOG.

  client (wireguard-go)  --veth 192.0.2.0/24--  server (the panel's NETNS)  --veth 198.51.100.0/24--  wan

The server is set up only through the service layer with NETNS pointing at
its namespace.  "wan" runs a small DNS server (the resolver's forwarder)
and a TCP server that reports the address and port it sees.
"""

import subprocess
import sys
import time

import pytest

from puqvpn import db as database
from puqvpn import settings as settings_module
from puqvpn.services import apply, connlog, resolver
from puqvpn.services import clients as clients_service
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services.system import Context, Runner
from tests.netns import Netns, requires_root_tools, start_wg_client, veth, wait_until, wg_name

pytestmark = [pytest.mark.netns,
              requires_root_tools("wg", "wireguard-go", "ip", "nft", "unbound", "unbound-checkconf",
                                  "unbound-control", "dig")]

SERVED_NAME = "www.puqvpn-test.example"
SERVED_ADDRESS = "203.0.113.77"

# A DNS server small enough to read: A records for one name, NXDOMAIN for the rest.
DNS_SERVER = r"""
import socket, struct, sys
name, address = sys.argv[1].lower(), socket.inet_aton(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 53))
while True:
    query, peer = sock.recvfrom(4096)
    ident, flags = struct.unpack(">HH", query[:4])
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode().lower())
        at += query[at] + 1
    qtype = struct.unpack(">H", query[at + 1:at + 3])[0]
    question = query[12:at + 5]
    found = ".".join(labels) == name
    answer = (b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + address) if found and qtype == 1 else b""
    rcode = 0 if found else 3
    header = struct.pack(">HHHHHH", ident, 0x8180 | (flags & 0x0100) | rcode, 1, 1 if answer else 0, 0, 0)
    sock.sendto(header + question + answer, peer)
"""

# Accepts one connection at a time and prints the peer it sees: the exit address and port.
TCP_SERVER = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080))
server.listen()
while True:
    conn, peer = server.accept()
    print(f"{peer[0]} {peer[1]}", flush=True)
    conn.close()
"""


def dig(ns, server, name, *extra):
    """(status, answers) of one query, e.g. ('NOERROR', ['203.0.113.77'])."""
    out = ns.run(["dig", "+time=2", "+tries=2", "+noall", "+comments", "+answer", f"@{server}", name, *extra],
                 check=False).stdout
    status = next((line.split("status: ")[1].split(",")[0] for line in out.splitlines() if "status: " in line),
                  "NO ANSWER")
    answers = [line.split()[-1] for line in out.splitlines() if line and not line.startswith(";")]
    return status, answers


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dns")
    server, client_ns, wan = Netns("pqds"), Netns("pqdc"), Netns("pqdw")
    db = None
    ctx = None
    try:
        veth(client_ns, "192.0.2.2/24", server, "192.0.2.1/24")
        _, wan_dev = veth(wan, "198.51.100.2/24", server, "198.51.100.1/24")
        wan.run(["ip", "route", "add", "10.8.0.0/24", "via", "198.51.100.1"])
        db = database.connect(tmp / "panel.sqlite3")
        settings = settings_module.load(
            environ={}, NETNS=server.name, INSTANCE_DIR=str(tmp), WG_CONF_DIR=str(tmp / "wireguard"),
            UNBOUND_CONF=str(tmp / "unbound" / "puqvpn.conf"), UNBOUND_RUN_DIR=str(tmp / "unbound-run"),
            UNBOUND_USER="", CONNLOG_PIDFILE=str(tmp / "connlog.pid"), CONNLOG_SYSLOG="0")
        ctx = Context(db, settings, Runner(netns=server.name))
        interface = interfaces_service.create(db, {
            "name": wg_name(), "address": "10.8.0.1/24", "listen_port": "51820", "endpoint": "192.0.2.1",
            "ext_device": wan_dev, "dns": "9.9.9.9"})
        alice = clients_service.create(db, {"interface": interface["id"], "name": "alice"})
        apply.interface_changed(ctx, interface["id"])
        start_wg_client(client_ns, alice, interface, "192.0.2.1", allowed_ips="0.0.0.0/0",
                        routes=("10.8.0.0/24", "198.51.100.0/24"))
        client_ns.run(["ping", "-c", "1", "-W", "5", "10.8.0.1"])

        wan.popen([sys.executable, "-c", DNS_SERVER, SERVED_NAME, SERVED_ADDRESS])
        tcp = wan.popen([sys.executable, "-c", TCP_SERVER], stdout=subprocess.PIPE, text=True)
        assert wait_until(lambda: ":53 " in wan.run(["ss", "-lunH"]).stdout
                          and ":8080 " in wan.run(["ss", "-ltnH"]).stdout, timeout=10)
        yield {"ctx": ctx, "server": server, "client": client_ns, "wan": wan, "interface": interface,
               "alice": alice, "tcp": tcp}
    finally:
        if ctx is not None:
            resolver.stop(ctx)
            connlog.stop_listener(ctx.settings)
        for ns in (client_ns, wan, server):
            ns.close()
        if db is not None:
            db.conn.close()


def switch_on(ctx, **options):
    return resolver.apply_options(ctx, {"enabled": True, "forwarders": ["198.51.100.2"], **options})


def test_a_client_resolves_through_the_panels_resolver_and_outsiders_are_refused(lab):
    ctx, interface = lab["ctx"], lab["interface"]
    _, changes = switch_on(ctx)
    assert "resolver: started" in changes
    assert resolver.status_panel(ctx)["state"] == "ok"
    # The profile now pushes the gateway instead of the interface's own 9.9.9.9.
    assert resolver.effective_dns(ctx.db, interface) == "10.8.0.1"

    assert dig(lab["client"], "10.8.0.1", SERVED_NAME) == ("NOERROR", [SERVED_ADDRESS])
    assert dig(lab["client"], "10.8.0.1", "missing.puqvpn-test.example")[0] == "NXDOMAIN"
    # The wan host reaches the gateway address (it has a route) but is not in a pool.
    assert dig(lab["wan"], "10.8.0.1", SERVED_NAME) == ("REFUSED", [])
    # And unbound listens on nothing else: not the server's public address.
    assert dig(lab["wan"], "198.51.100.1", SERVED_NAME)[0] == "NO ANSWER"


def test_a_setting_change_reloads_without_a_restart(lab, tmp_path):
    ctx = lab["ctx"]
    switch_on(ctx)
    pid = resolver.running_pid(ctx)
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"0.0.0.0 {SERVED_NAME}\n")
    _, changes = switch_on(ctx, blocklist=str(blocklist), cache_max_ttl=300)
    assert changes[-1] == "resolver: reloaded" and resolver.running_pid(ctx) == pid
    assert dig(lab["client"], "10.8.0.1", SERVED_NAME) == ("NXDOMAIN", [])
    switch_on(ctx, blocklist="")
    assert dig(lab["client"], "10.8.0.1", SERVED_NAME) == ("NOERROR", [SERVED_ADDRESS])


def test_a_broken_setting_is_caught_by_checkconf_and_the_resolver_keeps_running(lab):
    ctx = lab["ctx"]
    switch_on(ctx)
    pid = resolver.running_pid(ctx)
    config = resolver.conf_path(ctx).read_text()
    broken = Context(ctx.db, settings_module.Settings(ctx.settings, UNBOUND_USER="nosuchuser"), ctx.runner)
    with pytest.raises(resolver.ResolverError, match="user 'nosuchuser' does not exist"):
        switch_on(broken, forwarders=["198.51.100.99"])
    assert resolver.running_pid(ctx) == pid
    assert resolver.conf_path(ctx).read_text() == config
    assert resolver.load_options(ctx.db)["forwarders"] == ["198.51.100.2"]
    assert dig(lab["client"], "10.8.0.1", SERVED_NAME) == ("NOERROR", [SERVED_ADDRESS])


def test_switching_off_stops_the_resolver(lab):
    ctx = lab["ctx"]
    switch_on(ctx)
    _, changes = resolver.apply_options(ctx, {"enabled": False, "forwarders": ["198.51.100.2"]})
    assert changes == ["resolver: stopped"] and resolver.running_pid(ctx) is None
    assert resolver.effective_dns(ctx.db, lab["interface"]) == "9.9.9.9"
    assert dig(lab["client"], "10.8.0.1", SERVED_NAME)[0] == "NO ANSWER"


def test_the_connection_log_names_the_client_behind_an_exit_port(lab):
    ctx, interface = lab["ctx"], lab["interface"]
    ctx.db.execute("UPDATE interfaces SET conn_logging = 1 WHERE id = ?", [interface["id"]])
    changes = connlog.interface_changed(ctx, interface, [])
    assert changes[-1] == "connlog: listener started"
    assert wait_until(lambda: connlog.listener_pid(ctx.settings), timeout=5)

    # The server itself first uses exit port 45678 towards the same destination, so masquerade
    # must give the client's connection from port 45678 another one: the log has to show that one.
    connect = ("import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 45678)); "
               "s.connect(('198.51.100.2', 8080)); s.close()")
    lab["server"].run([sys.executable, "-c", connect, "198.51.100.1"])
    assert lab["tcp"].stdout.readline().split() == ["198.51.100.1", "45678"]
    lab["client"].run([sys.executable, "-c", connect, lab["alice"]["ip"]])
    exit_ip, exit_port = lab["tcp"].stdout.readline().split()
    asked_at = time.time()
    assert exit_ip == "198.51.100.1"          # masqueraded: the wan side never sees 10.8.0.2
    assert exit_port != "45678"               # and translated to a free port

    store = connlog.open_store(ctx.settings["CONNLOG_DATABASE"])
    rows = wait_until(lambda: connlog.who(store, exit_port, asked_at, exit_ip=exit_ip), timeout=5)
    assert [(r["client"], r["client_ip"], r["proto"], r["dest_ip"], r["dest_port"], r["likeliest"])
            for r in rows] == [("alice", lab["alice"]["ip"], "tcp", "198.51.100.2", 8080, True)]
    assert abs(rows[0]["at"] - asked_at) < 5

    # A changed retention restarts the listener with it.
    pid = connlog.listener_pid(ctx.settings)
    ctx.settings["CONNLOG_RETENTION_DAYS"] = "30"
    assert connlog.reconcile(ctx, []) == ["connlog: listener restarted (settings changed)"]
    assert wait_until(lambda: connlog.listener_pid(ctx.settings) not in (None, pid), timeout=5)
    assert connlog.reconcile(ctx, []) == []

    # Logging off again: the table and the listener go.
    ctx.db.execute("UPDATE interfaces SET conn_logging = 0 WHERE id = ?", [interface["id"]])
    assert connlog.reconcile(ctx, []) == ["connlog: table inet puqvpn_log removed", "connlog: listener stopped"]
    assert lab["server"].run(["nft", "list", "table", "inet", "puqvpn_log"], check=False).returncode != 0


def test_through_the_apply_layer_a_new_gateway_address_restarts_the_resolver_on_it(lab, monkeypatch):
    ctx, interface = lab["ctx"], lab["interface"]
    monkeypatch.setattr(apply, "BACKENDS", apply.BACKENDS + ("resolver", "connlog"))
    switch_on(ctx)
    pid = resolver.running_pid(ctx)
    ctx.db.execute("UPDATE interfaces SET address6 = 'fd42:42::1/64' WHERE id = ?", [interface["id"]])
    report = apply.interface_changed(ctx, interface["id"])
    assert ("resolver", "resolver: restarted (listen addresses changed)") in report.changes
    assert resolver.running_pid(ctx) not in (None, pid)
    listening = lab["server"].run(["ss", "-lunH"]).stdout
    assert "10.8.0.1:53 " in listening and "[fd42:42::1]:53 " in listening
    assert dig(lab["client"], "10.8.0.1", SERVED_NAME) == ("NOERROR", [SERVED_ADDRESS])

"""Per-client limits with tc: what gets built, what one change touches, and real classification."""

import re
import secrets

import pytest

from puqvpn import db as database
from puqvpn import settings as settings_module
from puqvpn.services import clients as clients_service
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services import shaping
from puqvpn.services.system import CommandError, Context, FakeRunner, Result, Runner
from tests.netns import Netns, requires_root_tools, veth


@pytest.fixture
def db(tmp_path):
    handle = database.connect(tmp_path / "test.sqlite3")
    yield handle
    handle.conn.close()


def make_interface(db, name="wg0", address="10.8.0.1/24", **extra):
    return interfaces_service.create(db, {"name": name, "address": address, "listen_port": "51820",
                                          "endpoint": "vpn.example.com", **extra})


def make_client(db, interface, name, **extra):
    return clients_service.create(db, {"interface": interface["id"], "name": name, **extra})


def shaped_fake_runner(device="wg0", signature=""):
    """A FakeRunner that reports an HTB layout of ours already on `device`."""
    return FakeRunner(responses={
        ("tc", "qdisc", "show", "dev", device): Result(0, "qdisc htb 1: root refcnt 2 r2q 10 default 0\n", ""),
        ("ip", "-o", "link", "show", "dev", shaping.ifb_name(device)):
            Result(0, f"9: ifb-{device}: <UP> mtu 1500 \\    alias {signature}\n", ""),
    })


def test_limit_is_own_value_else_interface_default_else_unlimited():
    interface = {"default_down_mbit": 20.0, "default_up_mbit": 0.0}
    assert shaping.effective_limits(interface, {"down_mbit": 5.0, "up_mbit": 2.0}) == (5.0, 2.0)
    assert shaping.effective_limits(interface, {"down_mbit": 0.0, "up_mbit": 0.0}) == (20.0, 0.0)
    assert shaping.effective_limits(interface, {"down_mbit": 5.0, "up_mbit": 2.0, "suspended_reason": "quota"}) \
        == (0.0, 0.0)


def test_rate_is_raised_by_the_tcp_and_ip_headers_so_goodput_matches():
    # 1368 of 1420 bytes are TCP payload: 5 Mbit/s of goodput needs 5.19 Mbit/s of packets.
    assert shaping.tc_rate(5, 1420) == round(5e6 * 1420 / 1368)
    assert shaping.tc_rate(100, 1420) == round(100e6 * 1420 / 1368)


def test_ifb_name_fits_fifteen_characters_and_is_stable():
    assert shaping.ifb_name("wg0") == "ifb-wg0"
    long = shaping.ifb_name("wg1234567890123")
    assert len(long) <= 15 and long == shaping.ifb_name("wg1234567890123")
    assert long != shaping.ifb_name("wg1234567890124")


def test_class_and_filter_ids_come_from_the_address():
    dev = shaping.wg_device({"name": "wg0", "address": "10.8.0.1/16", "mtu": 1420})
    assert dev.minor({"id": 7, "ip": "10.8.3.9"}) == 0x0309
    assert shaping.filter_handle("10.8.3.9") == (0x103, 9, (0x0a08 % 4093) + 1)
    # Pools wider than /16 repeat the low 16 bits, so classes follow the client id there.
    wide = shaping.wg_device({"name": "wg0", "address": "10.0.0.1/8", "mtu": 1420})
    assert wide.by_id and wide.minor({"id": 7, "ip": "10.8.3.9"}) == 7
    assert wide.minor({"id": 1, "ip": "10.8.3.9"}) == 1 and wide.minor({"id": 65535, "ip": "10.8.3.9"}) == 0xffff
    with pytest.raises(shaping.ShapingError, match="does not fit"):
        wide.minor({"id": 65536, "ip": "10.8.3.9"})


def test_one_client_change_is_one_batch_touching_only_that_client(db):
    interface = make_interface(db)
    alice = make_client(db, interface, "alice", down_mbit="5", up_mbit="2")
    make_client(db, interface, "bob", down_mbit="8")
    dev = shaping.wg_device(interface)
    runner = shaped_fake_runner(signature=dev.signature())
    ctx = Context(db, settings_module.load(environ={}), runner)

    shaping.client_changed(ctx, interface, alice)

    batches = [stdin for argv, stdin in runner.calls if argv[:3] == ["tc", "-batch", "-"]]
    assert len(batches) == 1
    lines = batches[0].splitlines()
    minor = f"1:{dev.minor(alice):x}"
    # Upload on the IFB, then download on the tunnel device: class, leaf queue, filter each.
    assert [line.split()[0:2] for line in lines] == [["class", "replace"], ["qdisc", "replace"],
                                                      ["filter", "replace"]] * 2
    assert all(minor in line for line in lines)
    assert "match ip src 10.8.0.2/32" in lines[2] and "dev ifb-wg0 " in lines[2]
    assert "match ip dst 10.8.0.2/32" in lines[5] and "dev wg0 " in lines[5]
    assert f"rate {shaping.tc_rate(2, 1420)}bit" in lines[0]
    assert f"rate {shaping.tc_rate(5, 1420)}bit" in lines[3]
    assert "10.8.0.3" not in batches[0]
    # One process, nothing inspected, torn down or rebuilt for a single change.
    assert runner.commands() == [["tc", "-batch", "-"]]


def test_the_device_missing_means_nothing_to_do(db):
    interface = make_interface(db)
    alice = make_client(db, interface, "alice", down_mbit="5")
    runner = FakeRunner(responses={
        ("tc", "-batch", "-"): Result(1, "", 'Cannot find device "wg0"\nCommand failed -:1\n'),
        ("tc", "qdisc", "show", "dev", "wg0"): Result(1, "", 'Cannot find device "wg0"\n')})
    ctx = Context(db, settings_module.load(environ={}), runner)
    assert shaping.client_changed(ctx, interface, alice) == []
    assert runner.commands() == [["tc", "-force", "-batch", "-"], ["tc", "-batch", "-"],
                                 ["tc", "qdisc", "show", "dev", "wg0", "root"]]


def test_lifting_a_limit_deletes_quietly_but_real_errors_raise(db):
    interface = make_interface(db)
    alice = make_client(db, interface, "alice")
    gone = "RTNETLINK answers: No such file or directory\nCommand failed -:1\n"
    runner = FakeRunner(responses={("tc", "-force", "-batch", "-"): Result(1, "", gone)})
    ctx = Context(db, settings_module.load(environ={}), runner)
    shaping.client_changed(ctx, interface, alice)
    (argv, stdin), = runner.calls
    assert stdin.splitlines()[:2] == ["filter del dev wg0 parent 1: prio 10 protocol ip handle 100:2:a09 u32",
                                      "class del dev wg0 classid 1:2"]
    assert len(stdin.splitlines()) == 4

    # A complaint that is not "nothing there" raises when the class is indeed still there.
    busy = "Error: HTB class in use.\nCommand failed -:2\n"
    runner.responses[("tc", "-force", "-batch", "-")] = Result(1, "", gone + busy)
    runner.responses[("tc", "class", "show", "dev", "wg0")] = Result(
        0, "class htb 1:2 root leaf 8001: prio 0 rate 5190Kbit ceil 5190Kbit burst 2838b cburst 2838b\n", "")
    runner.responses[("tc", "qdisc", "show", "dev", "wg0", "root")] = Result(0, "qdisc htb 1: root\n", "")
    runner.responses[("ip", "-o", "link", "show", "dev", "ifb-wg0")] = Result(
        0, f"alias {shaping.wg_device(interface).signature()}\n", "")
    with pytest.raises(CommandError, match="HTB class in use"):
        shaping.client_changed(ctx, interface, alice)


# What this kernel's tc says when one client's objects are deleted from a device that has no
# shaping of ours (nobody on it has a limit): no root HTB, so no filter chain to look in.
BARE_DEVICE_COMPLAINT = ("Error: Parent Qdisc doesn't exists.\nWe have an error talking to the kernel\n"
                         "Command failed -:1\nRTNETLINK answers: No such file or directory\nCommand failed -:2\n")


def test_deleting_a_client_from_a_device_without_limits_is_not_an_error(db):
    interface = make_interface(db, ikev2_enabled="1")
    dave = make_client(db, interface, "dave")
    runner = FakeRunner(responses={("tc", "-force", "-batch", "-"): Result(1, "", BARE_DEVICE_COMPLAINT)})
    ctx = Context(db, settings_module.load(environ={}), runner)
    removed = clients_service.delete(db, dave["id"])

    assert shaping.client_removed(ctx, interface, removed) == []
    # One delete batch for the wg device and its IFB, one for ipsec0 and its IFB; nothing inspected.
    assert runner.commands() == [["tc", "-force", "-batch", "-"]] * 2
    ipsec_batch = runner.calls[1][1].splitlines()
    assert f"class del dev ipsec0 classid 1:{dave['id']:x}" in ipsec_batch
    assert f"class del dev ifb-ipsec0 classid 1:{dave['id']:x}" in ipsec_batch


def test_an_unfamiliar_delete_complaint_is_settled_by_looking_at_the_device(db):
    interface = make_interface(db)
    dave = make_client(db, interface, "dave", down_mbit="5")
    # An older kernel says only "Invalid argument" where this one says the qdisc is missing.
    vague = "RTNETLINK answers: Invalid argument\nWe have an error talking to the kernel\nCommand failed -:1\n"
    runner = FakeRunner(responses={("tc", "-force", "-batch", "-"): Result(1, "", vague)})
    ctx = Context(db, settings_module.load(environ={}), runner)
    removed = clients_service.delete(db, dave["id"])

    shaping.client_removed(ctx, interface, removed)          # nothing of dave's is left: fine
    assert ["tc", "class", "show", "dev", "ifb-wg0"] in runner.commands()

    runner.responses[("tc", "filter", "show", "dev", "wg0")] = Result(
        0, "filter parent 1: protocol ip pref 10 u32 chain 0 fh 100:2:a09 order 2569 key ht 100 bkt 2 "
           "flowid 1:2 not_in_hw\n", "")
    with pytest.raises(CommandError) as error:
        shaping.client_removed(ctx, interface, removed)      # its filter is still there
    # The kernel's words and the line they answer, not tc's "error talking to the kernel".
    assert str(error.value).endswith("RTNETLINK answers: Invalid argument "
                                     "(in: filter del dev wg0 parent 1: prio 10 protocol ip handle 100:2:a09 u32)")


def ipsec_runner(root_qdisc, signature=""):
    """A FakeRunner whose ipsec0 has `root_qdisc` and whose IFB carries `signature`."""
    return FakeRunner(responses={
        ("tc", "qdisc", "show", "dev", "ipsec0"): Result(0, f"{root_qdisc}\n", ""),
        ("ip", "-o", "link", "show", "dev", "ifb-ipsec0"):
            Result(0, f"9: ifb-ipsec0: <UP> mtu 1500 \\    alias {signature}\n", ""),
    })


def test_a_bare_ipsec_device_gets_the_ikev2_limits_back(db):
    interface = make_interface(db, ikev2_enabled="1")
    alice = make_client(db, interface, "alice", down_mbit="5", up_mbit="2")
    make_client(db, interface, "bob")
    # charon has just made ipsec0 afresh: the kernel's default qdisc, no HTB.
    runner = ipsec_runner("qdisc noqueue 0: root refcnt 2")
    ctx = Context(db, settings_module.load(environ={}), runner)

    assert shaping.heal_ipsec_device(ctx) == "built"
    (batch,) = [stdin for argv, stdin in runner.calls if argv == ["tc", "-batch", "-"]]
    assert f"class replace dev ipsec0 parent 1: classid 1:{alice['id']:x} " in batch
    assert f"class replace dev ifb-ipsec0 parent 1: classid 1:{alice['id']:x} " in batch
    assert "match ip dst 10.8.0.2/32" in batch and "10.8.0.3" not in batch
    assert ["ip", "link", "add", "name", "ifb-ipsec0", "type", "ifb"] in runner.commands()


def test_a_shaped_or_unneeded_ipsec_device_is_only_looked_at(db):
    interface = make_interface(db, ikev2_enabled="1")
    alice = make_client(db, interface, "alice", down_mbit="5")
    dev = shaping.ipsec_device(Context(db, settings_module.load(environ={}), FakeRunner()), [interface])
    runner = ipsec_runner("qdisc htb 1: root refcnt 2 r2q 10 default 0", dev.signature())
    ctx = Context(db, settings_module.load(environ={}), runner)
    assert shaping.heal_ipsec_device(ctx) == "shaped"
    assert runner.commands() == [["tc", "qdisc", "show", "dev", "ipsec0", "root"],
                                 ["ip", "-o", "link", "show", "dev", "ifb-ipsec0"]]

    # Nobody with a limit: not even a look.
    clients_service.update(db, alice["id"], {"down_mbit": "0"})
    runner.calls.clear()
    assert shaping.heal_ipsec_device(ctx) == "unlimited" and runner.calls == []


def test_class_statistics_are_parsed():
    text = """class htb 1:2 root leaf 8001: prio 0 rate 5190Kbit ceil 5190Kbit burst 2838b cburst 2838b 
 Sent 1234 bytes 10 pkt (dropped 3, overlimits 4 requeues 0) 
 backlog 0b 0p requeues 0
 lended: 10 borrowed: 0 giants: 0
 tokens: 68250 ctokens: 68250

class htb 1:3 root leaf 8002: prio 0 rate 2075Kbit ceil 2075Kbit burst 2840b cburst 2840b 
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) 
 backlog 1420b 1p requeues 0
"""
    rows = shaping.parse_class_stats(text)
    assert [(r["minor"], r["rate"], r["bytes"], r["packets"], r["dropped"]) for r in rows] == \
        [(2, "5190Kbit", 1234, 10, 3), (3, "2075Kbit", 0, 0, 0)]
    assert rows[1]["backlog_packets"] == 1


# -- real tc in a namespace: a veth end stands in for the tunnel device ---------------------

def _classes(ns, device):
    out = ns.run(["tc", "-s", "class", "show", "dev", device]).stdout
    return {row["minor"]: row for row in shaping.parse_class_stats(out)}


def _filters(ns, device):
    out = ns.run(["tc", "filter", "show", "dev", device, "parent", "1:"]).stdout
    return {tuple(int(x, 16) for x in m[:3]): int(m[3], 16) for m in shaping._FILTER_RE.findall(out)}


@pytest.fixture
def lab(db):
    """Server namespace whose veth end is named like a wg interface; a peer namespace behind it."""
    server, peer = Netns("pqsh"), Netns("pqsp")
    try:
        dev_a, dev_b = veth(server, "10.99.0.1/24", peer, "10.99.0.2/24")
        name = f"wg{secrets.randbelow(90000) + 10000}"
        server.run(["ip", "link", "set", "dev", dev_a, "down"])
        server.run(["ip", "link", "set", "dev", dev_a, "name", name])
        server.run(["ip", "link", "set", "dev", name, "up"])
        server.run(["ip", "addr", "add", "10.8.0.1/16", "dev", name])
        interface = make_interface(db, name=name, address="10.8.0.1/16")
        settings = settings_module.load(environ={}, NETNS=server.name)
        ctx = Context(db, settings, Runner(netns=server.name))
        yield ctx, server, peer, interface, name, dev_b
    finally:
        server.close()
        peer.close()


def _ping_from(peer, server, name, peer_dev, client_ip, count=3):
    """Packets both ways for one client address: server -> client (download), client -> server (upload)."""
    mac = peer.run(["cat", f"/sys/class/net/{peer_dev}/address"]).stdout.strip()
    server.run(["ip", "neigh", "replace", client_ip, "lladdr", mac, "dev", name])
    peer.run(["ip", "addr", "add", f"{client_ip}/32", "dev", peer_dev])
    peer.run(["ip", "route", "replace", "10.8.0.1/32", "dev", peer_dev])
    peer.run(["ping", "-c", str(count), "-i", "0.05", "-W", "1", "-I", client_ip, "10.8.0.1"])
    peer.run(["ip", "addr", "del", f"{client_ip}/32", "dev", peer_dev])


@pytest.mark.netns
@requires_root_tools("tc", "ip", "ping")
def test_real_classes_filters_and_single_changes(lab):
    ctx, server, peer, interface, name, peer_dev = lab
    db = ctx.db
    ifb = shaping.ifb_name(name)
    limited = [make_client(db, interface, f"c{i}", ip=f"10.8.{i // 200}.{i % 200 + 2}",
                           down_mbit="5", up_mbit="2") for i in range(300)]
    free = make_client(db, interface, "free", ip="10.8.7.7")
    everyone = clients_service.for_interface(db, interface["id"])

    shaping.reconcile(ctx, [(interface, everyone)])
    down, up = _classes(server, name), _classes(server, ifb)
    assert len(down) == len(up) == 300            # the unlimited client has no class
    assert len(_filters(server, name)) == 300
    assert down[0x0002]["rate"] == "5190Kbit" and up[0x0002]["rate"] == "2076Kbit"

    # Traffic lands in the right class each way; the unlimited client's goes unclassified.
    target = limited[250]                          # 10.8.1.52, in the second third-octet table
    minor = shaping.wg_device(interface).minor(target)
    _ping_from(peer, server, name, peer_dev, target["ip"])
    _ping_from(peer, server, name, peer_dev, free["ip"])
    down, up = _classes(server, name), _classes(server, ifb)
    assert down[minor]["packets"] == 3 and up[minor]["packets"] == 3
    assert sum(row["packets"] for row in down.values()) == 3

    # One change: that class's rate changes, every other class and filter stays as it was.
    filters_before = _filters(server, name)
    clients_service.update(db, target["id"], {"down_mbit": "10"})
    shaping.client_changed(ctx, interface, clients_service.get(db, target["id"]))
    after = _classes(server, name)
    assert after[minor]["rate"] == "10380Kbit"
    assert after[minor]["packets"] == 3            # changed in place, not re-created
    assert all(after[m]["rate"] == "5190Kbit" for m in after if m != minor)
    assert _filters(server, name) == filters_before

    # Lifting the upload limit deletes only the upload class and filter.
    clients_service.update(db, target["id"], {"up_mbit": "0"})
    shaping.client_changed(ctx, interface, clients_service.get(db, target["id"]))
    assert minor in _classes(server, name) and minor not in _classes(server, ifb)
    assert len(_filters(server, ifb)) == 299

    # Removing a client deletes its classes and filters only.
    gone = limited[0]
    clients_service.delete(db, gone["id"])
    shaping.client_removed(ctx, interface, gone)
    assert 0x0002 not in _classes(server, name) and len(_classes(server, name)) == 299
    assert len(_filters(server, name)) == 299

    # A restart loses tc state; reconcile rebuilds exactly what the database says.
    server.run(["tc", "qdisc", "del", "dev", name, "root"])
    everyone = clients_service.for_interface(db, interface["id"])
    shaping.reconcile(ctx, [(interface, everyone)])
    assert len(_classes(server, name)) == 299 and len(_classes(server, ifb)) == 298
    assert _classes(server, name)[minor]["rate"] == "10380Kbit"
    # ...and reconciling again changes nothing.
    shaping.reconcile(ctx, [(interface, everyone)])
    assert len(_filters(server, name)) == 299 and len(_filters(server, ifb)) == 298


@pytest.mark.netns
@requires_root_tools("tc", "ip", "ping")
def test_interface_default_for_everyone_is_one_action(lab):
    ctx, server, _peer, interface, name, _dev = lab
    db = ctx.db
    interface = interfaces_service.update(db, interface["id"], {"default_down_mbit": "3"})[1]
    for i in range(5):
        make_client(db, interface, f"d{i}", down_mbit=str(10 + i), up_mbit="1")
    shaping.reconcile(ctx, [(interface, clients_service.for_interface(db, interface["id"]))])
    assert {row["rate"] for row in _classes(server, name).values()} == {"10380Kbit", "11418Kbit",
                                                                     "12456Kbit", "13494Kbit", "14532Kbit"}

    assert shaping.apply_interface_default(ctx, interface["id"]) == 5

    assert all(c["down_mbit"] == 0 and c["up_mbit"] == 0 for c in clients_service.for_interface(db, interface["id"]))
    assert {row["rate"] for row in _classes(server, name).values()} == {"3114Kbit"}
    assert _classes(server, shaping.ifb_name(name)) == {}       # default upload is unlimited
    counters = shaping.class_counters(ctx, interface, clients_service.for_interface(db, interface["id"]))
    assert sorted(r["client"]["name"] for r in counters) == [f"d{i}" for i in range(5)]
    assert re.fullmatch(r"\d+", str(counters[0]["bytes"]))


@pytest.mark.netns
@requires_root_tools("tc", "ip", "ping")
def test_ipv6_traffic_shares_the_clients_class(lab):
    ctx, server, peer, interface, name, peer_dev = lab
    db = ctx.db
    interface = interfaces_service.update(db, interface["id"], {"address6": "fd42:42::1/64"})[1]
    server.run(["ip", "-6", "addr", "add", "fd42:42::1/64", "dev", name, "nodad"])
    alice = make_client(db, interface, "alice", down_mbit="5", up_mbit="2")
    assert alice["ip6"]                                   # the IPv6 twin of its IPv4 address
    shaping.reconcile(ctx, [(interface, clients_service.for_interface(db, interface["id"]))])
    minor = shaping.wg_device(interface).minor(alice)

    mac = peer.run(["cat", f"/sys/class/net/{peer_dev}/address"]).stdout.strip()
    server.run(["ip", "-6", "neigh", "replace", alice["ip6"], "lladdr", mac, "dev", name])
    peer.run(["ip", "-6", "addr", "add", f"{alice['ip6']}/128", "dev", peer_dev, "nodad"])
    peer.run(["ip", "-6", "route", "add", "fd42:42::1/128", "dev", peer_dev])
    peer.run(["ping", "-6", "-c", "3", "-i", "0.05", "-W", "1", "-I", alice["ip6"], "fd42:42::1"])

    # Echo replies (and neighbour discovery answers) to alice are her download; her echoes her upload.
    assert _classes(server, name)[minor]["packets"] >= 3
    assert _classes(server, shaping.ifb_name(name))[minor]["packets"] >= 3
    # Lifting the limits removes the IPv6 filters along with the IPv4 ones.
    clients_service.update(db, alice["id"], {"down_mbit": "0", "up_mbit": "0"})
    shaping.client_changed(ctx, interface, clients_service.get(db, alice["id"]))
    assert _filters(server, name) == {} and _classes(server, name) == {}


@pytest.mark.netns
@requires_root_tools("tc", "ip", "ping")
def test_deleting_a_client_where_nobody_has_a_limit_with_real_tc(lab):
    ctx, server, _peer, interface, name, _dev = lab
    db = ctx.db
    dave = make_client(db, interface, "dave")
    shaping.reconcile(ctx, [(interface, clients_service.for_interface(db, interface["id"]))])
    assert "htb" not in server.run(["tc", "qdisc", "show", "dev", name]).stdout      # nothing to shape
    removed = clients_service.delete(db, dave["id"])
    assert shaping.client_removed(ctx, interface, removed) == []

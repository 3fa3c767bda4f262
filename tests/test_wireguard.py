"""The WireGuard backend against a modelled host: what it runs, and what it never runs."""

import os
import stat

import pytest

from puqvpn.services import clients, interfaces, wireguard
from puqvpn.services.system import CommandError, Result

from .fake_system import FakeSystem, make_context


@pytest.fixture
def system():
    wireguard.forget_backend()
    yield FakeSystem()
    wireguard.flush_config_writes()


@pytest.fixture
def ctx(tmp_path, system):
    return make_context(tmp_path, system)


@pytest.fixture
def wg0(ctx):
    return interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "address6": "fd42::1/64",
                                      "listen_port": "51820", "endpoint": "vpn.example.com"})


def rows(ctx, interface):
    return clients.for_interface(ctx.db, interface["id"])


def argv_text(system):
    return "\n".join(" ".join(argv) for argv in system.commands())


# ------------------------------------------------------------------ backend detection

def test_userspace_backend_is_chosen_where_the_kernel_has_no_wireguard(ctx, system):
    assert wireguard.backend(ctx) == "userspace"


def test_kernel_backend_is_chosen_where_ip_link_add_type_wireguard_works(tmp_path):
    wireguard.forget_backend()
    system = FakeSystem(kernel=True)
    ctx = make_context(tmp_path, system)
    assert wireguard.backend(ctx) == "kernel"
    probe = system.commands()[0]
    assert probe[:2] == ["ip", "link"] and probe[2] == "add" and probe[-2:] == ["type", "wireguard"]
    assert system.commands()[1] == ["ip", "link", "del", probe[3]], "the probe link is removed again"


def test_backend_is_detected_once(ctx, system):
    wireguard.backend(ctx)
    wireguard.backend(ctx)
    assert sum(1 for argv in system.commands() if argv[:3] == ["ip", "link", "add"]) == 1


def test_setting_forces_a_backend_without_probing(tmp_path):
    system = FakeSystem(kernel=False)
    ctx = make_context(tmp_path, system, WG_BACKEND="kernel")
    assert wireguard.backend(ctx) == "kernel"
    assert system.commands() == []


def test_unknown_backend_setting_is_refused(tmp_path):
    ctx = make_context(tmp_path, FakeSystem(), WG_BACKEND="bpf")
    with pytest.raises(wireguard.WireGuardError, match="auto, kernel or userspace"):
        wireguard.backend(ctx)


# ------------------------------------------------------------------ config file

def test_config_file_is_written_0600_with_the_wg_quick_text(ctx, wg0):
    clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    assert wireguard.write_config(ctx, wg0, rows(ctx, wg0)) is True
    path = wireguard.config_path(ctx, "wg0")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "PrivateKey = " + wg0["private_key"] in text and "# alice" in text
    assert [p.name for p in path.parent.iterdir()] == ["wg0.conf"], "no temporary file is left behind"


def test_unchanged_config_is_not_rewritten(ctx, wg0):
    wireguard.write_config(ctx, wg0, [])
    before = wireguard.config_path(ctx, "wg0").stat().st_mtime_ns
    assert wireguard.write_config(ctx, wg0, []) is False
    assert wireguard.config_path(ctx, "wg0").stat().st_mtime_ns == before


def test_a_failed_write_keeps_the_old_file(ctx, wg0, monkeypatch):
    wireguard.write_config(ctx, wg0, [])
    path = wireguard.config_path(ctx, "wg0")
    old = path.read_text()

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    changed = dict(wg0, listen_port=51999)
    with pytest.raises(OSError, match="No space left"):
        wireguard.write_config(ctx, changed, [])
    assert path.read_text() == old
    assert [p.name for p in path.parent.iterdir()] == ["wg0.conf"]


def test_interface_names_that_could_be_options_or_paths_are_refused(ctx):
    for name in ("-h", "../etc", "wg0\n", "a" * 16, ""):
        with pytest.raises(wireguard.WireGuardError):
            wireguard.check_name(name)


# ------------------------------------------------------------------ bringing an interface up

def test_interface_comes_up_with_addresses_mtu_port_key_and_peers(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    changes = wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    assert ["wireguard-go", "wg0"] in system.commands()
    link = system.links["wg0"]
    assert link["up"] and link["mtu"] == 1420
    assert link["addrs"] == {"10.8.0.1/24", "fd42::1/64"}
    state = system.wg["wg0"]
    assert state["private_key"] == wg0["private_key"] and state["port"] == 51820
    assert state["peers"][alice["public_key"]]["allowed"] == [f"{alice['ip']}/32", f"{alice['ip6']}/128"]
    assert system.sysctl["net.ipv4.ip_forward"] == "1"
    assert system.sysctl["net.ipv6.conf.all.forwarding"] == "1"
    assert system.sysctl["net.ipv6.conf.eth0.accept_ra"] == "2", "the SLAAC uplink keeps its router adverts"
    assert "wg0: created (userspace)" in changes


def test_keys_never_appear_on_a_command_line(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    wireguard.client_changed(ctx, wg0, alice)
    text = argv_text(system)
    assert wg0["private_key"] not in text
    assert alice["preshared_key"] not in text
    assert alice["private_key"] not in text


def test_applying_an_unchanged_interface_changes_nothing(ctx, system, wg0):
    clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    system.clear_calls()
    assert wireguard.interface_changed(ctx, wg0, rows(ctx, wg0)) == []
    assert not any(argv[:2] == ["wg", "syncconf"] for argv in system.commands())


def test_a_changed_address_replaces_the_old_one(ctx, system, wg0):
    wireguard.interface_changed(ctx, wg0, [])
    _old, new = interfaces.update(ctx.db, wg0["id"], {"address": "10.9.0.1/24"})
    wireguard.interface_changed(ctx, new, [])
    assert system.links["wg0"]["addrs"] == {"10.9.0.1/24", "fd42::1/64"}


def test_a_disabled_interface_goes_down_and_comes_back_with_its_clients(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    disabled = interfaces.set_enabled(ctx.db, wg0["id"], False)
    assert wireguard.interface_changed(ctx, disabled, rows(ctx, wg0)) == ["wg0: taken down"]
    assert "wg0" not in system.links
    enabled = interfaces.set_enabled(ctx.db, wg0["id"], True)
    wireguard.interface_changed(ctx, enabled, rows(ctx, wg0))
    assert alice["public_key"] in system.wg["wg0"]["peers"]


def test_an_existing_non_wireguard_device_is_not_touched(ctx, system, wg0):
    system.links["wg0"] = {"kind": "veth", "mtu": 1500, "up": True, "addrs": {"192.0.2.5/24"}}
    with pytest.raises(wireguard.WireGuardError, match="not a WireGuard interface"):
        wireguard.interface_changed(ctx, wg0, [])
    assert system.links["wg0"]["addrs"] == {"192.0.2.5/24"}


# ------------------------------------------------------------------ one client's change

def test_one_client_change_is_one_wg_set_for_that_peer(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    bob = clients.create(ctx.db, {"interface": wg0["id"], "name": "bob"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    system.wg["wg0"]["peers"][bob["public_key"]].update(hs=1700000000, rx=5000, tx=7000)
    system.clear_calls()

    carol = clients.create(ctx.db, {"interface": wg0["id"], "name": "carol"})
    wireguard.client_changed(ctx, wg0, carol)

    wg_calls = [argv for argv, _input in system.runner.calls if argv[0] == "wg"]
    assert wg_calls == [["wg", "set", "wg0", "peer", carol["public_key"], "preshared-key", "/dev/stdin",
                         "allowed-ips", f"{carol['ip']}/32,{carol['ip6']}/128"]]
    assert [i for a, i in system.runner.calls if a[0] == "wg"] == [carol["preshared_key"] + "\n"]
    assert system.wg["wg0"]["peers"][bob["public_key"]]["rx"] == 5000, "bob's session is untouched"
    assert alice["public_key"] in system.wg["wg0"]["peers"]


def test_suspend_removes_the_peer_and_resume_restores_it(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    suspended = clients.suspend(ctx.db, alice["id"])
    system.clear_calls()
    wireguard.client_changed(ctx, wg0, suspended)
    assert [a for a in system.commands() if a[0] == "wg"] == [["wg", "set", "wg0", "peer", alice["public_key"], "remove"]]
    assert alice["public_key"] not in system.wg["wg0"]["peers"]
    wireguard.flush_config_writes()
    assert "# alice" not in wireguard.config_path(ctx, "wg0").read_text()

    wireguard.client_changed(ctx, wg0, clients.resume(ctx.db, alice["id"]))
    assert alice["public_key"] in system.wg["wg0"]["peers"]


def test_resume_with_a_known_endpoint_makes_the_server_start_the_handshake(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    ctx.db.execute("UPDATE clients SET endpoint = '198.51.100.7:41234' WHERE id = ?", [alice["id"]])
    wireguard.client_changed(ctx, wg0, clients.suspend(ctx.db, alice["id"]))
    system.clear_calls()
    wireguard.client_changed(ctx, wg0, clients.resume(ctx.db, alice["id"]))
    first, second = [a for a in system.commands() if a[0] == "wg"]
    assert first[-4:] == ["endpoint", "198.51.100.7:41234", "persistent-keepalive", "1"]
    assert second == ["wg", "set", "wg0", "peer", alice["public_key"], "persistent-keepalive", "0"]
    assert system.wg["wg0"]["peers"][alice["public_key"]]["keepalive"] == 0, "left as the database wants it"


def test_a_recreated_interface_calls_back_clients_with_a_known_endpoint(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    bob = clients.create(ctx.db, {"interface": wg0["id"], "name": "bob"})
    ctx.db.execute("UPDATE clients SET endpoint = '198.51.100.7:41234' WHERE id = ?", [alice["id"]])
    changes = wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))     # after a reboot
    assert "wg0: handshake started with 1 client(s) at their last endpoint" in changes
    assert sum(1 for a in system.commands() if a[:2] == ["wg", "addconf"]) == 2
    peers = system.wg["wg0"]["peers"]
    assert peers[alice["public_key"]]["nudged"] == 1 and peers[alice["public_key"]]["keepalive"] == 0
    assert peers[alice["public_key"]]["allowed"] == [f"{alice['ip']}/32", f"{alice['ip6']}/128"], "its addresses are kept"
    assert "nudged" not in peers[bob["public_key"]], "no endpoint known: nothing to call"
    system.clear_calls()
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    assert not any(a[:2] == ["wg", "addconf"] for a in system.commands()), "a running interface is left alone"


@pytest.mark.parametrize("stored, expected", [
    ("198.51.100.7:41234", "198.51.100.7:41234"),
    ("[2001:db8::7]:51820", "[2001:db8::7]:51820"),
    ("198.51.100.7", None),
    ("host.example:51820", None),
    ("198.51.100.7:0", None),
    ("1.2.3.4:5 remove", None),
    (None, None),
])
def test_only_a_well_formed_endpoint_is_used(stored, expected):
    assert wireguard.last_endpoint({"endpoint": stored}) == expected


def test_a_changed_client_address_moves_with_its_peer(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    _old, moved = clients.update(ctx.db, alice["id"], {"ip": "10.8.0.77", "ip6": ""})
    wireguard.client_changed(ctx, wg0, moved)
    assert system.wg["wg0"]["peers"][alice["public_key"]]["allowed"] == ["10.8.0.77/32"]


def test_client_change_on_a_missing_interface_brings_the_interface_up(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.client_changed(ctx, wg0, alice)   # after a reboot: nothing is up yet
    assert system.links["wg0"]["up"]
    assert alice["public_key"] in system.wg["wg0"]["peers"]


def test_deleting_a_client_removes_its_peer(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    row = clients.delete(ctx.db, alice["id"])
    wireguard.client_removed(ctx, wg0, row)
    assert system.wg["wg0"]["peers"] == {}


def test_client_changes_rewrite_the_config_file_once_shortly_after(ctx, system, wg0, monkeypatch):
    wireguard.interface_changed(ctx, wg0, [])
    writes = []
    real_write = wireguard.write_atomic
    monkeypatch.setattr(wireguard, "write_atomic", lambda path, text: writes.append(path) or real_write(path, text))
    for name in ("alice", "bob", "carol"):
        wireguard.client_changed(ctx, wg0, clients.create(ctx.db, {"interface": wg0["id"], "name": name}))
    wireguard.flush_config_writes()
    assert len(writes) == 1, "a burst of changes is one write"
    text = wireguard.config_path(ctx, "wg0").read_text()
    assert all(f"# {name}" in text for name in ("alice", "bob", "carol"))


def test_a_failed_deferred_write_marks_the_interface_pending(ctx, system, wg0, monkeypatch):
    wireguard.interface_changed(ctx, wg0, [])

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(wireguard, "write_atomic", read_only)
    wireguard.client_changed(ctx, wg0, clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"}))
    wireguard.flush_config_writes()
    assert "wg0.conf failed: [Errno 13] Permission denied" in interfaces.get(ctx.db, wg0["id"])["apply_error"]


# ------------------------------------------------------------------ reconcile

def test_reconcile_removes_interfaces_the_panel_made_and_the_database_lost(ctx, system, wg0):
    wireguard.interface_changed(ctx, wg0, [])
    interfaces.delete(ctx.db, wg0["id"])
    foreign = wireguard.config_path(ctx, "wg7")
    foreign.write_text("[Interface]\nPrivateKey = x\n")      # an admin's own tunnel
    system.create("wg7", "tun")
    changes = wireguard.reconcile(ctx, [])
    assert "wg0: taken down" in changes
    assert "wg0" not in system.links and not wireguard.config_path(ctx, "wg0").exists()
    assert "wg7" in system.links and foreign.exists()


def test_reconcile_restores_peers_changed_behind_the_panels_back(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    wireguard.interface_changed(ctx, wg0, rows(ctx, wg0))
    system.wg["wg0"]["peers"].pop(alice["public_key"])
    system.wg["wg0"]["peers"]["X" * 43 + "="] = {"psk": None, "allowed": ["10.8.0.99/32"]}
    changes = wireguard.reconcile(ctx, [(wg0, rows(ctx, wg0))])
    assert "wg0: 1 peer(s) added" in changes and "wg0: 1 peer(s) removed" in changes
    assert set(system.wg["wg0"]["peers"]) == {alice["public_key"]}
    assert wireguard.reconcile(ctx, [(wg0, rows(ctx, wg0))]) == []


# ------------------------------------------------------------------ status

DUMP = (
    "cHJpdmF0ZQ==\tcHVibGlj\t51820\toff\n"
    "peerA=\t(none)\t198.51.100.7:41234\t10.8.0.2/32,fd42::2/128\t1700000000\t1000\t2000\t0\n"
    "peerB=\tcHNr\t(none)\t10.8.0.3/32\t0\t0\t0\toff\n"
)


def test_dump_gives_endpoint_handshake_and_counters_per_peer(ctx, system):
    system.runner.responses[("wg", "show", "wg0", "dump")] = Result(0, DUMP, "")
    status = wireguard.dump(ctx, "wg0", now=1700000100)
    assert status["peerA="] == {"endpoint": "198.51.100.7:41234", "latest_handshake": 1700000000,
                                "rx": 1000, "tx": 2000, "allowed_ips": ["10.8.0.2/32", "fd42::2/128"],
                                "online": True}
    assert status["peerB="]["online"] is False and status["peerB="]["endpoint"] is None
    assert "preshared_key" not in status["peerB="]
    assert system.commands() == [["wg", "show", "wg0", "dump"]]


def test_online_means_a_handshake_newer_than_the_timeout(ctx, system):
    system.runner.responses[("wg", "show", "wg0", "dump")] = Result(0, DUMP, "")
    assert wireguard.dump(ctx, "wg0", now=1700000000 + 179)["peerA="]["online"] is True
    assert wireguard.dump(ctx, "wg0", now=1700000000 + 180)["peerA="]["online"] is False


def test_dump_of_a_missing_interface_says_so(ctx, system):
    with pytest.raises(CommandError, match="does not exist on the system"):
        wireguard.dump(ctx, "wg3")

"""Quick checks for "the handshake works but there is no internet", against a modelled host."""

import json

import pytest

from puqvpn.services import apply, diagnostics, interfaces, wireguard
from puqvpn.services.system import Result

from .fake_system import FakeSystem, make_context


@pytest.fixture
def system():
    wireguard.forget_backend()
    yield FakeSystem()
    wireguard.flush_config_writes()


@pytest.fixture
def ctx(tmp_path, system, monkeypatch):
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "firewall"))
    return make_context(tmp_path, system)


@pytest.fixture
def wg0(ctx, system):
    system.links["eth0"] = {"kind": "veth", "mtu": 1500, "up": True, "addrs": {"192.0.2.10/24"}}
    row = interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "address6": "fd42::1/64",
                                     "listen_port": "51820", "endpoint": "vpn.example.com"})
    apply.interface_changed(ctx, row["id"])
    return interfaces.get(ctx.db, row["id"])


def states(ctx, interface):
    return {item["name"]: (item["state"], item["detail"]) for item in diagnostics.checks(ctx, interface)}


def test_a_healthy_interface_passes_every_check(ctx, wg0):
    found = states(ctx, wg0)
    assert {name: state for name, (state, _detail) in found.items()} == {
        "Interface": "ok", "Listen port": "ok", "Peers": "ok", "IPv4 forwarding": "ok", "IPv6 forwarding": "ok",
        "External device": "ok", "Firewall": "ok", "NAT": "ok", "MTU": "ok", "Other firewalls": "ok"}


def test_forwarding_off_is_a_failure_that_says_what_it_breaks(ctx, system, wg0):
    system.sysctl["net.ipv4.ip_forward"] = "0"
    state, detail = states(ctx, wg0)["IPv4 forwarding"]
    assert state == "fail" and "nothing beyond it" in detail


def test_a_missing_nat_rule_is_found(ctx, system, wg0):
    table = system.tables["puqvpn"]
    table["text"] = "\n".join(line for line in table["text"].splitlines() if "masquerade" not in line)
    state, detail = states(ctx, wg0)["NAT"]
    assert state == "fail" and "no masquerade rule for 10.8.0.0/24" in detail


def test_nat_out_of_a_device_that_is_not_the_default_route_is_a_warning(ctx, system, wg0):
    system.links["eth1"] = {"kind": "veth", "mtu": 1500, "up": True, "addrs": set()}
    changed = interfaces.update(ctx.db, wg0["id"], {"ext_device": "eth1"})[1]
    state, detail = states(ctx, changed)["External device"]
    assert state == "warn" and "default route is via eth0" in detail


def test_a_missing_external_device_is_a_failure(ctx, wg0):
    changed = interfaces.update(ctx.db, wg0["id"], {"ext_device": "ens9"})[1]
    assert states(ctx, changed)["External device"] == ("fail", "ens9 does not exist on this server.")


def test_an_mtu_too_large_for_the_uplink_is_a_warning(ctx, system, wg0):
    system.links["eth0"]["mtu"] = 1460          # e.g. a PPPoE or cloud uplink
    state, detail = states(ctx, wg0)["MTU"]
    assert state == "warn" and "Use 1380 or less" in detail


def test_another_tables_forward_drop_policy_is_pointed_out(ctx, system, wg0):
    chains = {"nftables": [{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward",
                                      "policy": "drop"}}]}
    system.runner.responses[("nft", "-j", "list", "chains")] = Result(0, json.dumps(chains), "")
    state, detail = states(ctx, wg0)["Other firewalls"]
    assert state == "warn" and "ip filter FORWARD" in detail


def test_a_stale_firewall_and_missing_interface_say_press_apply(ctx, system, wg0):
    del system.links["wg0"]
    assert states(ctx, wg0)["Interface"] == ("fail", "wg0 does not exist on the system: press Apply.")


def test_raw_outputs_show_the_system_view_without_running_anything_destructive(ctx, system, wg0):
    system.clear_calls()
    titles = [title for title, _text in diagnostics.raw_outputs(ctx, wg0)]
    assert titles == ["wg show wg0", "ip -d address show dev wg0", "ip route", "ip -6 route",
                      "nft list table inet puqvpn"]
    assert all(argv[1] in ("show", "-d", "route", "-6", "list") for argv in system.commands())


def test_the_page_runs_nothing_when_the_panel_is_kept_off_the_system(logged_in, db):
    row = interfaces.create(db, {"name": "wg5", "address": "10.5.0.1/24", "listen_port": "51825",
                                 "endpoint": "vpn.example.com"})
    page = logged_in.client.get(f"/diagnostics/interfaces/{row['id']}")
    assert page.status_code == 200
    assert "SYSTEM_APPLY is 0" in page.get_data(as_text=True)


def test_the_page_of_an_unknown_interface_is_404(logged_in):
    assert logged_in.client.get("/diagnostics/interfaces/999").status_code == 404

"""The panel's nftables table: what it contains, how it is loaded, and what it refuses."""

import pytest

from puqvpn.services import clients, firewall, interfaces
from puqvpn.services.system import CommandError, Result

from .fake_system import FakeSystem, make_context


@pytest.fixture
def system():
    return FakeSystem()


@pytest.fixture
def ctx(tmp_path, system):
    return make_context(tmp_path, system)


def make_interface(ctx, **fields):
    data = {"name": "wg0", "address": "10.8.0.1/24", "address6": "fd42::1/64", "listen_port": "51820",
            "endpoint": "vpn.example.com", **fields}
    return interfaces.create(ctx.db, data)


def rules(ctx):
    return firewall.render_rules(ctx, firewall.load_state(ctx))


def add_forward(ctx, interface, client, proto="tcp", ext_port=8080, dest_port=80):
    ctx.db.execute("INSERT INTO port_forwards (interface_id, client_id, proto, ext_port, dest_port) "
                   "VALUES (?, ?, ?, ?, ?)", [interface["id"], client["id"], proto, ext_port, dest_port])


def nft_scripts(system):
    return [text for argv, text in system.runner.calls if argv[:2] == ["nft", "-f"]]


# ------------------------------------------------------------------ what the table holds

def test_pool_is_masqueraded_out_of_the_default_route_device(ctx):
    make_interface(ctx)
    text = rules(ctx)
    assert 'oifname "eth0" ip saddr 10.8.0.0/24 counter masquerade' in text
    assert 'oifname "eth0" ip6 saddr fd42::/64 counter masquerade' in text


def test_an_explicit_external_device_wins(ctx):
    make_interface(ctx, ext_device="ens3")
    assert 'oifname "ens3" ip saddr 10.8.0.0/24' in rules(ctx)


def test_without_a_default_route_everything_but_the_tunnel_is_masqueraded(ctx, system):
    system.default_dev = {4: None, 6: None}
    make_interface(ctx)
    assert 'oifname != "wg0" ip saddr 10.8.0.0/24 counter masquerade' in rules(ctx)


def test_public_ip_mode_routes_the_pool_without_nat(ctx):
    make_interface(ctx, nat=False)
    text = rules(ctx)
    assert "masquerade" not in text
    assert "no new connections into the NAT pool" not in text, "routed clients are reachable"
    assert 'iifname "wg0" counter accept' in text


def test_client_to_client_is_dropped_unless_allowed(ctx):
    wg0 = make_interface(ctx)
    assert "ip saddr 10.8.0.0/24 ip daddr 10.8.0.0/24 counter drop" in rules(ctx)
    assert "ip6 saddr fd42::/64 ip6 daddr fd42::/64 counter drop" in rules(ctx)
    interfaces.update(ctx.db, wg0["id"], {"client_to_client": True})
    assert "ip saddr 10.8.0.0/24 ip daddr 10.8.0.0/24 counter accept" in rules(ctx)


def test_client_to_client_rule_comes_before_the_general_accept(ctx):
    make_interface(ctx)
    text = rules(ctx)
    assert text.index("ip saddr 10.8.0.0/24 ip daddr 10.8.0.0/24") < text.index('iifname "wg0" counter accept')
    assert text.index("ip saddr 10.8.0.0/24 ip daddr 10.8.0.0/24") < text.index("no new connections")


def test_port_forward_is_a_dnat_with_its_forward_accept(ctx):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    add_forward(ctx, wg0, alice, "udp", 27015, 27016)
    text = rules(ctx)
    assert f"fib daddr type local udp dport 27015 counter dnat ip to {alice['ip']}:27016" in text
    assert f'oifname "wg0" ip daddr {alice["ip"]} udp dport 27016 ct status dnat counter accept' in text


def test_a_disabled_interface_has_no_rules(ctx):
    wg0 = make_interface(ctx)
    interfaces.set_enabled(ctx.db, wg0["id"], False)
    assert "wg0" not in rules(ctx)


def test_suspended_addresses_are_the_set_elements(ctx):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    clients.create(ctx.db, {"interface": wg0["id"], "name": "bob"})
    clients.suspend(ctx.db, alice["id"])
    state = firewall.load_state(ctx)
    assert state["suspended"] == {4: {alice["ip"]}, 6: {alice["ip6"]}}
    text, _digest = firewall.render(ctx, state)
    assert f"elements = {{ {alice['ip']} }}" in text


# ------------------------------------------------------------------ loading

def test_the_table_is_replaced_in_one_transaction_without_touching_others(ctx, system):
    make_interface(ctx)
    firewall.reconcile(ctx, [])
    [script] = nft_scripts(system)
    assert script.startswith("table inet puqvpn {}\ndelete table inet puqvpn\ntable inet puqvpn {\n")
    assert "flush ruleset" not in script and script.count("delete ") == 1


def test_reconcile_twice_changes_nothing_the_second_time(ctx, system):
    wg0 = make_interface(ctx)
    clients.suspend(ctx.db, clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})["id"])
    assert firewall.reconcile(ctx, []) == ["firewall: table inet puqvpn loaded (was missing)"]
    system.clear_calls()
    assert firewall.reconcile(ctx, []) == []
    assert nft_scripts(system) == []


def test_reconcile_restores_the_table_after_a_reboot(ctx, system):
    make_interface(ctx)
    firewall.reconcile(ctx, [])
    system.tables.clear()        # what a reboot does
    assert firewall.reconcile(ctx, []) == ["firewall: table inet puqvpn loaded (was missing)"]
    assert "puqvpn" in system.tables


def test_reconcile_fixes_set_elements_that_drifted(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    firewall.reconcile(ctx, [])
    clients.suspend(ctx.db, alice["id"])        # committed, then the panel died before applying
    assert firewall.reconcile(ctx, []) == ["firewall: suspended sets +2 -0"]
    assert system.tables["puqvpn"]["sets"]["suspended4"] == {alice["ip"]}


def test_suspending_one_client_only_adds_its_elements(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    firewall.reconcile(ctx, [])
    system.clear_calls()
    firewall.client_changed(ctx, wg0, clients.suspend(ctx.db, alice["id"]))
    assert nft_scripts(system) == [
        f"add element inet puqvpn suspended4 {{ {alice['ip']} }}\n"
        f"add element inet puqvpn suspended6 {{ {alice['ip6']} }}\n"]
    system.clear_calls()
    firewall.client_changed(ctx, wg0, clients.resume(ctx.db, alice["id"]))
    [script] = nft_scripts(system)
    assert "delete table" not in script
    assert system.tables["puqvpn"]["sets"]["suspended4"] == set()


def test_resuming_a_client_that_was_never_blocked_is_not_an_error(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    firewall.reconcile(ctx, [])
    assert firewall.client_changed(ctx, wg0, alice) == ["firewall: alice unblocked"]


def test_a_client_change_after_a_reboot_loads_the_whole_table(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    assert firewall.client_changed(ctx, wg0, alice) == ["firewall: table inet puqvpn loaded (was missing)"]


def test_deleting_a_client_with_a_port_forward_reloads_the_rules(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    add_forward(ctx, wg0, alice)
    firewall.reconcile(ctx, [])
    assert "dnat" in system.tables["puqvpn"]["text"]
    row = clients.delete(ctx.db, alice["id"])      # the forward goes with it (cascade)
    assert firewall.client_removed(ctx, wg0, row) == ["firewall: table inet puqvpn loaded (rules changed)"]
    assert "dnat" not in system.tables["puqvpn"]["text"]


# ------------------------------------------------------------------ refusing bad input

def test_a_bad_table_name_is_refused_before_nft_runs(tmp_path, system):
    ctx = make_context(tmp_path, system, NFT_TABLE='x }\nflush ruleset')
    with pytest.raises(firewall.FirewallError, match="NFT_TABLE"):
        firewall.reconcile(ctx, [])
    assert nft_scripts(system) == []


def test_a_bad_external_device_in_the_database_is_refused(ctx, system):
    make_interface(ctx)
    ctx.db.execute("""UPDATE interfaces SET ext_device = 'eth0" accept' WHERE name = 'wg0'""")
    with pytest.raises(firewall.FirewallError, match="external device"):
        firewall.reconcile(ctx, [])
    assert nft_scripts(system) == []


def test_a_bad_port_forward_is_refused_and_the_old_table_stays(ctx, system):
    wg0 = make_interface(ctx)
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    firewall.reconcile(ctx, [])
    before = system.tables["puqvpn"]["text"]
    add_forward(ctx, wg0, alice, "tcp", 70000, 80)
    with pytest.raises(firewall.FirewallError, match="tcp/70000"):
        firewall.reconcile(ctx, [])
    assert system.tables["puqvpn"]["text"] == before


def test_nft_errors_keep_the_line_that_says_why(ctx, system):
    system.runner.responses[("nft", "-f")] = Result(
        1, "", "/dev/stdin:14:3-40: Error: Could not process rule: Operation not supported\n"
               "\t\tfib daddr type local tcp dport 8080\n\t\t^^^^^^^^^^^^^^^^\n")
    make_interface(ctx)
    with pytest.raises(CommandError) as error:
        firewall.reconcile(ctx, [])
    assert str(error.value).endswith("Error: Could not process rule: Operation not supported")


def test_nft_missing_is_named(ctx, system):
    system.runner.responses[("nft",)] = CommandError(["nft", "-t"], reason="could not run: nft is not installed")
    make_interface(ctx)
    with pytest.raises(CommandError, match="nft is not installed"):
        firewall.reconcile(ctx, [])


def test_default_route_device_picks_the_lowest_metric(ctx, system):
    system.runner.responses[("ip", "-j", "-4", "route")] = Result(
        0, '[{"dst":"default","dev":"wwan0","metric":600},{"dst":"default","dev":"eth1","metric":100}]', "")
    assert firewall.default_route_device(ctx, 4) == "eth1"

"""The apply layer's failure policy: the change is kept, marked pending, and said out loud.

Every way the system can refuse (a tool missing, a port taken, a command
failing or hanging) must reach the admin as a message naming what failed
and why, with the database row kept and the interface marked pending until
a reconcile succeeds.
"""

import sys
import types

import pytest

from puqvpn.services import apply, clients, interfaces, wireguard
from puqvpn.services.system import CommandError, Result

from .fake_system import FakeSystem, make_context


@pytest.fixture(autouse=True)
def only_our_backends(monkeypatch):
    # The orchestrator is tested against the WireGuard and firewall backends;
    # the others have their own tests.
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "firewall"))
    wireguard.forget_backend()
    yield
    wireguard.flush_config_writes()


@pytest.fixture
def system():
    return FakeSystem()


@pytest.fixture
def ctx(tmp_path, system):
    return make_context(tmp_path, system)


@pytest.fixture
def wg0(ctx):
    return interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                      "endpoint": "vpn.example.com"})


def apply_error(ctx, interface):
    return interfaces.get(ctx.db, interface["id"])["apply_error"]


def missing(tool):
    """What the Runner raises when the binary is not there, for whichever argv was run."""
    return lambda argv, _input: CommandError(argv, reason=f"could not run: {tool} is not installed")


# ------------------------------------------------------------------ off switch

def test_system_apply_off_runs_nothing(tmp_path, system):
    ctx = make_context(tmp_path, system, SYSTEM_APPLY="0")
    wg0 = interfaces.create(ctx.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                     "endpoint": "vpn.example.com"})
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    apply.interface_changed(ctx, wg0["id"])
    apply.client_changed(ctx, alice["id"])
    apply.client_removed(ctx, alice)
    apply.interface_removed(ctx, wg0)
    assert "SYSTEM_APPLY is 0" in str(apply.reconcile(ctx))
    assert system.commands() == []


# ------------------------------------------------------------------ the happy path

def test_interface_and_client_changes_reach_every_backend(ctx, system, wg0):
    report = apply.interface_changed(ctx, wg0["id"])
    assert ("wireguard", "wg0: created (userspace)") in report.changes
    assert ("firewall", "firewall: table inet puqvpn loaded (was missing)") in report.changes
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    report = apply.client_changed(ctx, alice["id"])
    assert report.ok and alice["public_key"] in system.wg["wg0"]["peers"]


def test_reconcile_twice_changes_nothing_the_second_time(ctx, system, wg0):
    clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    assert apply.reconcile(ctx).changed
    second = apply.reconcile(ctx)
    assert not second.changed
    assert str(second) == "nothing to change: the live system matches the database"


def test_reconcile_converges_after_the_panel_died_mid_change(ctx, system, wg0):
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    apply.reconcile(ctx)
    # Committed to the database, killed before any apply call:
    clients.suspend(ctx.db, alice["id"])
    bob = clients.create(ctx.db, {"interface": wg0["id"], "name": "bob"})
    report = apply.reconcile(ctx)
    assert set(system.wg["wg0"]["peers"]) == {bob["public_key"]}
    assert system.tables["puqvpn"]["sets"]["suspended4"] == {alice["ip"]}
    assert report.changed and not apply.reconcile(ctx).changed


# ------------------------------------------------------------------ every failure is named and kept

@pytest.mark.parametrize("prefix, response, expected", [
    (("wg",), missing("wg"), "wg is not installed"),
    (("wireguard-go",), missing("wireguard-go"), "wireguard-go is not installed"),
    (("wg", "syncconf"), Result(1, "", "Unable to modify interface: Address already in use\n"),
     "listen port 51820/udp is already taken by another program"),
    (("wg", "syncconf"), CommandError(["wg", "syncconf", "wg0", "/dev/stdin"], reason="timed out after 15 s"),
     "`wg syncconf wg0 /dev/stdin` timed out after 15 s"),
    (("wireguard-go",), Result(1, "", "ERROR: (wg0) Failed to create TUN device: no such file or directory\n"),
     "could not create its TUN device"),
])
def test_interface_failures_are_named_kept_and_marked_pending(ctx, system, wg0, prefix, response, expected):
    system.runner.responses[prefix] = response
    with pytest.raises(apply.ApplyError) as error:
        apply.interface_changed(ctx, wg0["id"])
    assert expected in str(error.value)
    assert str(error.value).startswith("wg0: wireguard: ")
    assert expected in apply_error(ctx, wg0)
    assert interfaces.get(ctx.db, wg0["id"])["listen_port"] == 51820, "the admin's change is kept"


def test_a_failing_command_shows_its_stderr(ctx, system, wg0):
    apply.interface_changed(ctx, wg0["id"])
    system.runner.responses[("wg", "set")] = Result(1, "", "Unable to modify interface: Cannot allocate memory\n")
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    with pytest.raises(apply.ApplyError, match="exit 1\\): Unable to modify interface: Cannot allocate memory"):
        apply.client_changed(ctx, alice["id"])
    assert "Cannot allocate memory" in apply_error(ctx, wg0)
    assert clients.get(ctx.db, alice["id"]) is not None


def test_nft_missing_leaves_wireguard_working(ctx, system, wg0):
    system.runner.responses[("nft",)] = missing("nft")
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    with pytest.raises(apply.ApplyError) as error:
        apply.interface_changed(ctx, wg0["id"])
    assert [backend for backend, _name, _message in error.value.failures] == ["firewall"]
    assert "firewall: `nft -t list table …` could not run: nft is not installed" in str(error.value)
    assert alice["public_key"] in system.wg["wg0"]["peers"], "WireGuard was applied all the same"


def test_a_failed_backend_does_not_stop_the_next_one(ctx, system, wg0, monkeypatch):
    calls = []
    ikev2 = types.ModuleType("puqvpn.services.fake_ikev2")

    def client_changed(ctx, interface, client):
        calls.append(client["name"])
        raise CommandError(["swanctl", "--load-all"], 1, "connecting to 'unix:///var/run/charon.vici' failed")
    ikev2.client_changed = client_changed
    monkeypatch.setitem(sys.modules, "puqvpn.services.fake_ikev2", ikev2)
    monkeypatch.setattr(apply, "BACKENDS", ("fake_ikev2", "wireguard", "firewall"))
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    with pytest.raises(apply.ApplyError, match="fake_ikev2: `swanctl --load-all` failed .*charon.vici"):
        apply.client_changed(ctx, alice["id"])
    assert calls == ["alice"]
    assert alice["public_key"] in system.wg["wg0"]["peers"]


def test_a_backend_module_that_does_not_exist_is_skipped(ctx, system, wg0, monkeypatch):
    monkeypatch.setattr(apply, "BACKENDS", ("wireguard", "not_written_yet", "firewall"))
    assert apply.interface_changed(ctx, wg0["id"]).ok


def test_a_backend_that_cannot_be_imported_is_reported(ctx, system, wg0, monkeypatch):
    def broken_import(name, _real=apply.importlib.import_module):
        if name.endswith(".firewall"):
            raise SyntaxError("invalid syntax (firewall.py, line 3)")
        return _real(name)
    monkeypatch.setattr(apply.importlib, "import_module", broken_import)
    with pytest.raises(apply.ApplyError, match="firewall: could not load: invalid syntax"):
        apply.reconcile(ctx)
    assert "wg0" in system.links


# ------------------------------------------------------------------ pending and retry

def test_reconcile_clears_the_mark_once_the_system_accepts_the_change(ctx, system, wg0):
    system.runner.responses[("wg",)] = missing("wg")
    with pytest.raises(apply.ApplyError):
        apply.interface_changed(ctx, wg0["id"])
    assert apply.pending(ctx)
    assert apply.retry_pending(ctx).failures, "still failing: the mark stays"
    assert apply_error(ctx, wg0)

    del system.runner.responses[("wg",)]        # the admin installs wireguard-tools
    report = apply.retry_pending(ctx)
    assert report.ok and report.changed
    assert apply_error(ctx, wg0) is None and not apply.pending(ctx)
    assert apply.retry_pending(ctx) is None, "nothing pending: nothing runs"


def test_a_client_change_does_not_clear_an_older_pending_mark(ctx, system, wg0):
    apply.interface_changed(ctx, wg0["id"])
    interfaces.set_apply_error(ctx.db, wg0["id"], "wg0: strongswan: charon is down")
    alice = clients.create(ctx.db, {"interface": wg0["id"], "name": "alice"})
    apply.client_changed(ctx, alice["id"])
    assert apply_error(ctx, wg0) == "wg0: strongswan: charon is down"


def test_a_failed_removal_is_kept_until_reconcile_removes_it(ctx, system, wg0):
    apply.interface_changed(ctx, wg0["id"])
    row = interfaces.delete(ctx.db, wg0["id"])
    system.runner.responses[("ip", "link", "del")] = Result(1, "", "RTNETLINK answers: Operation not permitted\n")
    with pytest.raises(apply.ApplyError, match="Operation not permitted"):
        apply.interface_removed(ctx, row)
    assert "Operation not permitted" in apply.global_error(ctx)
    assert apply.pending(ctx)

    del system.runner.responses[("ip", "link", "del")]
    report = apply.retry_pending(ctx)
    assert ("wireguard", "wg0: taken down") in report.changes
    assert "wg0" not in system.links
    assert apply.global_error(ctx) is None


def test_a_failure_in_one_interface_marks_only_that_one(ctx, system, wg0):
    wg1 = interfaces.create(ctx.db, {"name": "wg1", "address": "10.9.0.1/24", "listen_port": "51821",
                                     "endpoint": "vpn.example.com"})
    system.runner.responses[("wireguard-go", "wg1")] = missing("wireguard-go")
    with pytest.raises(apply.ApplyError) as error:
        apply.reconcile(ctx)
    assert error.value.report.changes, "what did change is still reported"
    assert apply_error(ctx, wg0) is None
    assert "wireguard-go is not installed" in apply_error(ctx, wg1)
    assert system.links["wg0"]["up"]


def test_apply_error_is_a_command_error_for_callers_that_catch_those(ctx, system, wg0):
    system.runner.responses[("wg",)] = missing("wg")
    with pytest.raises(CommandError):
        apply.reconcile(ctx)

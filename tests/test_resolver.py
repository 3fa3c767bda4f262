"""The clients' DNS resolver: what the unbound config says, what is refused, and how it is loaded."""

import json
import os
from pathlib import Path

import pytest

from puqvpn import settings as settings_module
from puqvpn.services import connlog
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services import resolver
from puqvpn.services.system import CommandError, Context, FakeRunner, Result


# ``db`` is the conftest fixture: the database of a panel app kept off the live system.


@pytest.fixture
def settings(tmp_path):
    return settings_module.load(environ={}, UNBOUND_CONF=str(tmp_path / "unbound" / "puqvpn.conf"),
                                UNBOUND_RUN_DIR=str(tmp_path / "run"), UNBOUND_USER="")


def make_interface(db, name="wg0", address="10.8.0.1/24", port="51820", **extra):
    return interfaces_service.create(db, {"name": name, "address": address, "listen_port": port,
                                          "endpoint": "vpn.example.com", **extra})


def server_lines(text):
    return [line.strip() for line in text.splitlines() if line.startswith("\t")]


# ------------------------------------------------------------------ rendering

def test_listens_on_gateways_only_and_answers_only_the_pools(db, settings):
    make_interface(db, "wg0", "10.8.0.1/24", address6="fd42:42::1/64")
    make_interface(db, "wg1", "10.9.0.1/16", port="51821")
    text = resolver.render(settings, {"enabled": True}, resolver._interfaces(db))
    lines = server_lines(text)
    assert [l for l in lines if l.startswith("interface:")] == [
        "interface: 10.8.0.1", "interface: fd42:42::1", "interface: 10.9.0.1"]
    assert [l for l in lines if l.startswith("access-control:")] == [
        "access-control: 0.0.0.0/0 refuse", "access-control: ::/0 refuse",
        "access-control: 127.0.0.0/8 refuse", "access-control: ::1/128 refuse",
        "access-control: 10.8.0.0/24 allow", "access-control: fd42:42::/64 allow",
        "access-control: 10.9.0.0/16 allow"]
    assert "interface-automatic: no" in lines and "ip-freebind: yes" in lines


def test_disabled_interfaces_are_not_served(db, settings):
    wg0 = make_interface(db)
    interfaces_service.set_enabled(db, wg0["id"], False)
    text = resolver.render(settings, {"enabled": True}, resolver._interfaces(db))
    assert resolver.listen_lines(text) == [] and "10.8.0.0/24 allow" not in text
    # With nothing to serve the resolver is not started at all (unbound would take localhost).
    resolver.save_options(db, {"enabled": True})
    runner = FakeRunner()
    assert resolver.ensure(Context(db, settings, runner)) == [] and runner.commands() == []


def test_forwarders_plain_and_over_tls(db, settings):
    plain = resolver.render(settings, {"forwarders": "9.9.9.9, 149.112.112.112", "cache_max_ttl": 3600}, [])
    assert "\tforward-addr: 9.9.9.9\n\tforward-addr: 149.112.112.112\n\tforward-tls-upstream: no" in plain
    assert "\tcache-max-ttl: 3600\n" in plain and "tls-cert-bundle" not in plain
    tls = resolver.render(settings, {"forwarders": ["1.1.1.1#cloudflare-dns.com", "[2606:4700::1111]@8853"],
                                     "tls": True}, [])
    assert "\tforward-addr: 1.1.1.1@853#cloudflare-dns.com\n\tforward-addr: 2606:4700::1111@8853\n" in tls
    assert "\tforward-tls-upstream: yes" in tls
    assert '\ttls-cert-bundle: "/etc/ssl/certs/ca-certificates.crt"' in tls


def test_without_forwarders_unbound_resolves_from_the_root(settings):
    text = resolver.render(settings, {"forwarders": []}, [])
    assert "forward-zone:" not in text


def test_blocklist_entries_become_local_zones(settings):
    text = resolver.render(settings, {"block_action": "always_refuse"}, [], ["ads.example", "track.example.net"])
    assert '\tlocal-zone: "ads.example." always_refuse\n\tlocal-zone: "track.example.net." always_refuse\n' in text


def test_control_socket_and_pid_file_live_in_the_run_dir(settings, tmp_path):
    text = resolver.render(settings, {}, [])
    assert f'\tpidfile: "{tmp_path}/run/unbound.pid"' in text
    assert f'\tcontrol-interface: "{tmp_path}/run/unbound.ctl"' in text and "control-use-cert: no" in text


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("forwarder, message", [
    ("1.1.1.1\nserver:", "unexpected characters"),
    ('1.1.1.1"', "unexpected characters"),
    ("dns.example.com", "is not an IP address"),
    ("1.1.1.1@0", "port must be 1 to 65535"),
    ("1.1.1.1@99999", "port must be 1 to 65535"),
    ("1.1.1.1#bad_name!", "is not a host name"),
    ("[2606:4700::1111", "missing ']'"),
])
def test_bad_forwarders_are_refused_with_the_reason(forwarder, message):
    with pytest.raises(resolver.ResolverError) as caught:
        resolver.validate_options({"forwarders": [forwarder]})
    assert message in caught.value.fields["forwarders"]


def test_other_fields_are_checked_together():
    with pytest.raises(resolver.ResolverError) as caught:
        resolver.validate_options({"forwarders": "1.1.1.1 1.0.0.1 8.8.8.8", "cache_max_ttl": "-5",
                                   "block_action": "redirect", "exclude": ["wg0\n"]})
    assert set(caught.value.fields) == {"forwarders", "cache_max_ttl", "block_action", "exclude"}
    with pytest.raises(resolver.ResolverError) as caught:
        resolver.validate_options({"forwarders": "", "tls": True})
    assert "needs at least one forwarder" in caught.value.fields["tls"]


def test_blocklist_reads_hosts_domain_and_rpz_lines():
    text = """# a hosts file
127.0.0.1 localhost
::1 localhost ip6-localhost
0.0.0.0 ads.example.com   # inline comment
0.0.0.0 a.tracker.example b.tracker.example
plain-domain.example
Upper.Example.ORG.
$TTL 300
@ SOA localhost. root.localhost. 1 3600 600 86400 60
  NS localhost.
*.rpz-blocked.example CNAME .
rpz-blocked.example 300 IN CNAME .
"""
    assert resolver.parse_blocklist(text) == [
        "a.tracker.example", "ads.example.com", "b.tracker.example", "plain-domain.example",
        "rpz-blocked.example", "upper.example.org"]


@pytest.mark.parametrize("line, message", [
    ('0.0.0.0 "evil" server:', "unexpected characters"),
    ("0.0.0.0 bad..example", "is not a domain name"),
    ("-lead.example", "is not a domain name"),
    ("ads.example A 1.2.3.4", "is neither a hosts line"),
    ("ads.example CNAME walled.example.", "only 'CNAME .'"),
    ("x" * 64 + ".example", "is not a domain name"),
])
def test_a_bad_blocklist_line_is_named_and_nothing_is_applied(line, message):
    with pytest.raises(resolver.ResolverError) as caught:
        resolver.parse_blocklist(f"good.example\n{line}\n")
    assert str(caught.value).startswith("blocklist line 2:") and message in str(caught.value)


def test_blocklist_path_must_exist_and_be_plain(tmp_path):
    with pytest.raises(resolver.ResolverError, match="cannot read"):
        resolver.validate_options({"blocklist": str(tmp_path / "missing.txt")})
    with pytest.raises(resolver.ResolverError, match="absolute path"):
        resolver.validate_options({"blocklist": "relative/list.txt"})
    listed = tmp_path / "list.txt"
    listed.write_text("ads.example\n")
    assert resolver.validate_options({"blocklist": str(listed)})["blocklist"] == str(listed)


# ------------------------------------------------------------------ what profiles push

def test_profiles_push_the_gateway_when_the_resolver_is_on(db):
    wg0 = make_interface(db, "wg0", "10.8.0.1/24", address6="fd42:42::1/64", dns="9.9.9.9")
    wg1 = make_interface(db, "wg1", "10.9.0.1/24", port="51821", dns="1.1.1.1")
    assert resolver.effective_dns(db, wg0) == "9.9.9.9"
    resolver.save_options(db, {"enabled": True, "exclude": ["wg1"]})
    assert resolver.effective_dns(db, wg0) == "10.8.0.1, fd42:42::1"
    assert resolver.effective_dns(db, wg1) == "1.1.1.1"


def test_options_are_stored_as_json_in_the_options_table(db):
    resolver.save_options(db, {"enabled": True, "forwarders": "9.9.9.9", "cache_max_ttl": "600"})
    row = next(db.query("SELECT value FROM options WHERE key = 'resolver'"))
    assert json.loads(row["value"])["forwarders"] == ["9.9.9.9"]
    assert resolver.load_options(db)["cache_max_ttl"] == 600


# ------------------------------------------------------------------ loading (scripted runner)

def test_checkconf_runs_on_a_temp_file_before_the_config_is_replaced(db, settings):
    make_interface(db)
    resolver.save_options(db, {"enabled": True})
    runner = FakeRunner()
    ctx = Context(db, settings, runner)
    changes = resolver.ensure(ctx)
    checkconf, start = runner.commands()
    assert checkconf[0] == "unbound-checkconf" and checkconf[1].endswith(".tmp") and checkconf[1] != settings["UNBOUND_CONF"]
    assert start == ["unbound", "-c", settings["UNBOUND_CONF"]]
    assert changes == [f"resolver: configuration written to {settings['UNBOUND_CONF']}", "resolver: started"]
    assert "interface: 10.8.0.1" in resolver.conf_path(ctx).read_text()


def test_a_config_unbound_rejects_leaves_file_and_daemon_untouched(db, settings):
    make_interface(db)
    resolver.save_options(db, {"enabled": True, "forwarders": "9.9.9.9"})
    ctx = Context(db, settings, FakeRunner())
    resolver.ensure(ctx)
    before = resolver.conf_path(ctx).read_text()

    failing = FakeRunner(responses={("unbound-checkconf",): Result(
        1, "", "[1] unbound-checkconf[7:0] fatal error: user 'nobody-here' does not exist.\n")})
    broken = settings_module.Settings(settings, UNBOUND_USER="nobody-here")
    ctx = Context(db, broken, failing)
    with pytest.raises(resolver.ResolverError, match="user 'nobody-here' does not exist"):
        resolver.apply_options(ctx, {"enabled": True, "forwarders": "8.8.8.8"})
    assert [argv[0] for argv in failing.commands()] == ["unbound-checkconf"]
    assert resolver.conf_path(ctx).read_text() == before
    assert resolver.load_options(db)["forwarders"] == ["9.9.9.9"]      # the old options are back
    assert [p.name for p in resolver.conf_path(ctx).parent.iterdir()] == ["puqvpn.conf"]   # no temp left


def test_a_stale_pid_file_never_points_the_panel_at_another_process(db, settings):
    ctx = Context(db, settings, FakeRunner())
    pidfile = Path(resolver.run_paths(settings)["pidfile"])
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{os.getpid()}\n")          # alive, but not our unbound
    assert resolver.running_pid(ctx) is None and resolver.stop(ctx) is False


def test_options_not_given_keep_their_saved_value(db, settings):
    resolver.save_options(db, {"forwarders": "9.9.9.9", "cache_max_ttl": 600})
    resolver.apply_options(Context(db, settings_module.Settings(settings, SYSTEM_APPLY="0")), {"enabled": True})
    options = resolver.load_options(db)
    assert (options["enabled"], options["forwarders"], options["cache_max_ttl"]) == (True, ["9.9.9.9"], 600)


def test_backend_does_nothing_while_the_resolver_is_off_and_not_running(db, settings):
    wg0 = make_interface(db)
    runner = FakeRunner()
    ctx = Context(db, settings, runner)
    assert resolver.interface_changed(ctx, wg0, []) == []
    assert resolver.reconcile(ctx, [(wg0, [])]) == []
    assert runner.commands() == []


def test_status_panel_says_off_on_and_down(db, settings):
    ctx = Context(db, settings, FakeRunner())
    assert resolver.status_panel(ctx)["detail"].startswith("Off")
    resolver.save_options(db, {"enabled": True})
    assert resolver.status_panel(ctx)["state"] == "down"


def test_a_missing_unbound_is_a_clear_error(db, settings):
    make_interface(db)
    resolver.save_options(db, {"enabled": True})
    runner = FakeRunner(responses={("unbound", "-c"): CommandError(
        ["unbound"], reason="could not run: unbound is not installed")})
    with pytest.raises(CommandError, match="unbound is not installed"):
        resolver.ensure(Context(db, settings, runner))


# ------------------------------------------------------------------ the pages

def test_the_resolver_page_saves_options_and_shows_what_profiles_get(app, db, logged_in):
    make_interface(db, "wg0", "10.8.0.1/24", dns="9.9.9.9")
    page = logged_in.client.get("/resolver/").get_data(as_text=True)
    assert "DNS resolver for clients" in page and "9.9.9.9" in page
    response = logged_in.post("/resolver/", data={"enabled": "on", "forwarder1": "9.9.9.9#dns.quad9.net",
                                                  "forwarder2": "", "tls": "on", "cache_max_ttl": "3600",
                                                  "blocklist": "", "block_action": "always_nxdomain",
                                                  "push_wg0": "on"})
    assert response.status_code == 302
    options = resolver.load_options(db)
    assert (options["enabled"], options["tls"], options["forwarders"], options["exclude"]) == \
        (True, True, ["9.9.9.9#dns.quad9.net"], [])
    page = logged_in.client.get("/resolver/").get_data(as_text=True)
    assert "<td>10.8.0.1</td>" in page         # what profiles push now
    entry = next(db.query("SELECT * FROM audit_log WHERE action = 'resolver.save'"))
    assert entry["outcome"] == "ok"


def test_a_bad_forwarder_is_shown_next_to_its_field_and_nothing_is_saved(app, db, logged_in):
    resolver.save_options(db, {"forwarders": "1.1.1.1"})
    response = logged_in.post("/resolver/", data={"enabled": "on", "forwarder1": "dns.example\nserver:",
                                                  "cache_max_ttl": "3600", "block_action": "always_nxdomain"})
    assert response.status_code == 422
    assert 'id="e-forwarder1"' in response.get_data(as_text=True)
    assert resolver.load_options(db)["forwarders"] == ["1.1.1.1"]


def test_the_connection_log_page_answers_who_was_it(app, db, logged_in):
    store = connlog.open_store(app.config["PUQVPN"]["CONNLOG_DATABASE"])
    at = connlog.parse_time("2026-12-04 14:02:10")
    connlog.store(store, [{"at": at, "interface": "wg0", "client": "alice", "client_ip": "10.8.0.2",
                           "proto": "tcp", "exit_ip": "198.51.100.1", "exit_port": 40001,
                           "dest_ip": "203.0.113.9", "dest_port": 443}])
    store.close()
    response = logged_in.post("/resolver/connections", data={"port": "40001", "time": "2026-12-04 14:03"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<td>alice</td>" in page and "(likeliest)" in page and "198.51.100.1:40001" in page
    bad = logged_in.post("/resolver/connections", data={"port": "x", "time": "noon", "address": "nope"})
    assert bad.status_code == 422
    assert all(f'id="e-{name}"' in bad.get_data(as_text=True) for name in ("port", "time", "address"))
    # Lookups are personal data: each one is in the audit log.
    entry = next(db.query("SELECT * FROM audit_log WHERE action = 'resolver.connections' ORDER BY id LIMIT 1"))
    assert entry["target"] == "port=40001 time=2026-12-04 14:03" and "1 match(es)" in entry["detail"]


def test_only_admins_see_the_resolver_and_the_log(app, db, auth):
    auth.login("viewer", role="viewer")
    assert auth.client.get("/resolver/").status_code == 403
    assert auth.client.get("/resolver/connections").status_code == 403

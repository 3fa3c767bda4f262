"""Connection logging: the nftables rules, the NFLOG messages, the store and the "who was it?" lookup."""

import socket
import struct
import time

import pytest

from puqvpn import db as database
from puqvpn import settings as settings_module
from puqvpn.services import clients as clients_service
from puqvpn.services import connlog
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services.system import Context, FakeRunner, Result


@pytest.fixture
def db(tmp_path):
    handle = database.connect(tmp_path / "test.sqlite3")
    yield handle
    handle.conn.close()


@pytest.fixture
def settings(tmp_path):
    return settings_module.load(environ={}, CONNLOG_DATABASE=str(tmp_path / "connlog.sqlite3"),
                                CONNLOG_PIDFILE=str(tmp_path / "run" / "connlog.pid"))


def make_interface(db, name="wg0", address="10.8.0.1/24", port="51820", **extra):
    return interfaces_service.create(db, {"name": name, "address": address, "listen_port": port,
                                          "endpoint": "vpn.example.com", **extra})


def make_client(db, interface, name, **extra):
    return clients_service.create(db, {"interface": interface["id"], "name": name, **extra})


# ------------------------------------------------------------------ rules

def test_only_interfaces_with_logging_on_get_rules(db, settings):
    logged = make_interface(db, "wg0", "10.8.0.1/24", address6="fd42:42::1/64", conn_logging=True)
    quiet = make_interface(db, "wg1", "10.9.0.1/24", port="51821")
    alice = make_client(db, logged, "alice")
    make_client(db, quiet, "carol")
    text, digest = connlog.render(settings, connlog.logged(db))
    assert text.startswith("table inet puqvpn_log {}\ndelete table inet puqvpn_log\ntable inet puqvpn_log {\n")
    assert ("\tchain postrouting {\n"
            f'\t\tcomment "puqvpn connlog {digest}"\n'
            "\t\ttype filter hook postrouting priority srcnat + 1; policy accept;\n"
            "\t\tct state new ct original ip saddr vmap @clients4\n"
            "\t\tct state new ct original ip6 saddr vmap @clients6\n") in text
    assert f"\t\telements = {{ {alice['ip']} : jump client{alice['id']}_4 }}" in text
    assert f"\t\telements = {{ {alice['ip6']} : jump client{alice['id']}_6 }}" in text
    assert (f'\t\tlog prefix "puqvpn-conn wg0 {alice["ip"]} alice " group 7301 snaplen 128' in text)
    assert "carol" not in text and "10.9.0." not in text
    assert "level info" not in text          # the kernel log only when asked for


def test_kernel_log_is_added_on_request(db, settings):
    make_client(db, make_interface(db, conn_logging=True), "alice")
    settings = settings_module.Settings(settings, CONNLOG_KERNEL_LOG="1")
    text, _ = connlog.render(settings, connlog.logged(db))
    assert 'log prefix "puqvpn-conn wg0 10.8.0.2 alice " level info' in text


def test_no_logging_interface_removes_the_table(db, settings):
    make_client(db, make_interface(db), "alice")
    text, digest = connlog.render(settings, connlog.logged(db))
    assert digest is None and text == "table inet puqvpn_log {}\ndelete table inet puqvpn_log\n"


def test_the_prefix_fits_the_kernel_limit_and_refuses_odd_names():
    prefix = connlog.log_prefix("wg12345", "fd42:4242:4242:4242:4242:4242:4242:4242", "n" * 63)
    assert len(prefix.encode()) <= 127 and prefix.endswith(" ")
    with pytest.raises(connlog.ConnlogError):
        connlog.log_prefix("wg0", "10.8.0.2", 'bob" accept')


def test_the_table_name_must_differ_from_the_main_table(settings):
    with pytest.raises(connlog.ConnlogError, match="table name of its own"):
        connlog.table_name(settings_module.Settings(settings, CONNLOG_NFT_TABLE="puqvpn"))


def test_rules_are_loaded_only_when_they_changed(db, settings):
    make_client(db, make_interface(db, conn_logging=True), "alice")
    text, digest = connlog.render(settings, connlog.logged(db))
    listed = (f'table inet puqvpn_log {{\n\tchain postrouting {{\n\t\tcomment "puqvpn connlog {digest}"\n'
              "\t\ttype filter hook postrouting priority srcnat + 1; policy accept;\n\t}\n}\n")
    runner = FakeRunner(responses={("nft", "-t", "list"): Result(0, listed, "")})
    assert connlog.ensure_table(Context(db, settings, runner)) == []
    missing = FakeRunner(responses={("nft", "-t", "list"): Result(1, "", "Error: No such file or directory\n")})
    assert connlog.ensure_table(Context(db, settings, missing)) == [
        "connlog: table inet puqvpn_log loaded (logging wg0)"]
    assert missing.calls[-1] == (["nft", "-f", "/dev/stdin"], text)


def test_backend_starts_the_listener_in_the_namespace_of_the_runner(db, settings):
    wg0 = make_interface(db, conn_logging=True)
    make_client(db, wg0, "alice")
    runner = FakeRunner(responses={("nft", "-t", "list"): Result(1, "", "Error: No such file or directory\n")})
    changes = connlog.interface_changed(Context(db, settings, runner), wg0, [])
    assert changes[-1] == "connlog: listener started"
    listen = runner.commands()[-1]
    assert listen[3:] == ["listen", "--group", "7301", "--database", settings["CONNLOG_DATABASE"],
                          "--pidfile", settings["CONNLOG_PIDFILE"], "--retention-days", "90", "--syslog", "1"]


# ------------------------------------------------------------------ NFLOG messages

def nflog_message(prefix, payload, timestamp=None):
    """An NFLOG packet message body as the kernel sends it (nfgenmsg + attributes)."""
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7301))
    body += connlog._attr(connlog.NFULA_PREFIX, prefix.encode() + b"\0")
    if timestamp is not None:
        body += connlog._attr(connlog.NFULA_TIMESTAMP, struct.pack(">QQ", int(timestamp), 250000))
    return body + connlog._attr(connlog.NFULA_PAYLOAD, payload)


def ipv4_tcp(src, sport, dst, dport):
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 64240, 0, 0)


def ipv6_udp(src, sport, dst, dport):
    header = struct.pack(">IHBB16s16s", 6 << 28, 8, 17, 64, socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
    return header + struct.pack(">HHHH", sport, dport, 8, 0)


def test_a_logged_packet_becomes_an_entry_with_the_exit_port():
    body = nflog_message("puqvpn-conn wg0 10.8.0.2 alice ", ipv4_tcp("198.51.100.1", 40001, "203.0.113.9", 443),
                         timestamp=1_780_000_000)
    assert connlog.entry_from_message(body) == {
        "at": 1_780_000_000.25, "interface": "wg0", "client": "alice", "client_ip": "10.8.0.2", "proto": "tcp",
        "exit_ip": "198.51.100.1", "exit_port": 40001, "dest_ip": "203.0.113.9", "dest_port": 443}


def test_ipv6_and_the_arrival_time_when_the_kernel_gives_none():
    body = nflog_message("puqvpn-conn wg0 fd42:42::2 alice ", ipv6_udp("2001:db8::1", 5353, "2001:db8:9::9", 53))
    entry = connlog.entry_from_message(body, now=1234.5)
    assert (entry["at"], entry["proto"], entry["exit_ip"], entry["exit_port"], entry["dest_port"]) == \
        (1234.5, "udp", "2001:db8::1", 5353, 53)


def test_packets_logged_by_someone_else_are_ignored():
    body = nflog_message("other-prefix ", ipv4_tcp("198.51.100.1", 1, "203.0.113.9", 2))
    assert connlog.entry_from_message(body) is None


# ------------------------------------------------------------------ store and lookup

def entry(at, client, exit_port, exit_ip="198.51.100.1", dest_ip="203.0.113.9"):
    return {"at": at, "interface": "wg0", "client": client, "client_ip": "10.8.0.2", "proto": "tcp",
            "exit_ip": exit_ip, "exit_port": exit_port, "dest_ip": dest_ip, "dest_port": 443}


def test_who_names_the_last_client_on_that_port_before_the_time(tmp_path):
    conn = connlog.open_store(tmp_path / "log.sqlite3")
    t = connlog.parse_time("2026-12-04 14:03:00")
    connlog.store(conn, [entry(t - 7200, "alice", 40001), entry(t - 60, "bob", 40001),
                         entry(t + 3600, "carol", 40001), entry(t - 30, "dave", 40002),
                         entry(t - 10, "erin", 40001, exit_ip="198.51.100.7")])
    rows = connlog.who(conn, 40001, t, exit_ip="198.51.100.1")
    assert [(row["client"], row["likeliest"]) for row in rows] == [("bob", True), ("alice", False)]
    assert rows[0]["time"] == "2026-12-04 14:02:00 UTC"
    assert connlog.who(conn, 40003, t) == []


def test_the_client_name_is_the_one_from_the_time_of_the_connection(tmp_path):
    # Addresses are reassigned: the stored entry keeps the name, not a pointer to today's owner.
    conn = connlog.open_store(tmp_path / "log.sqlite3")
    connlog.store(conn, [entry(1000.0, "alice", 40001)])
    assert connlog.who(conn, 40001, 1000.0)[0]["client"] == "alice"


def test_entries_past_the_retention_are_deleted(tmp_path):
    conn = connlog.open_store(tmp_path / "log.sqlite3")
    now = time.time()
    connlog.store(conn, [entry(now - 91 * 86400, "old", 1), entry(now - 89 * 86400, "kept", 2)])
    assert connlog.prune(conn, 90, now=now) == 1
    assert [row["client"] for row in connlog.recent(conn)] == ["kept"]


@pytest.mark.parametrize("text, expected", [
    ("2026-12-04 14:03", 1796392980.0),
    ("2026-12-04T14:03:00Z", 1796392980.0),
    ("2026-12-04T15:03:00+01:00", 1796392980.0),
    ("1796392980", 1796392980.0),
])
def test_report_times_are_read_as_utc_unless_they_say_otherwise(text, expected):
    assert connlog.parse_time(text) == expected


def test_a_bad_time_or_port_is_refused(tmp_path):
    with pytest.raises(connlog.ConnlogError, match="is not a time"):
        connlog.parse_time("yesterday at two")
    with pytest.raises(connlog.ConnlogError, match="is not a port"):
        connlog.who(connlog.open_store(tmp_path / "log.sqlite3"), "70000", 0)


def test_the_command_line_lookup(tmp_path, capsys):
    path = tmp_path / "log.sqlite3"
    connlog.store(connlog.open_store(path), [entry(connlog.parse_time("2026-12-04 14:02:10"), "alice", 40001)])
    assert connlog.main(["who", "--database", str(path), "--port", "40001", "--time", "2026-12-04 14:03"]) == 0
    assert capsys.readouterr().out == ("* 2026-12-04 14:02:10 UTC wg0 client=alice ip=10.8.0.2 proto=tcp "
                                       "exit=198.51.100.1:40001 dst=203.0.113.9:443\n")
    assert connlog.main(["who", "--database", str(path), "--port", "40002", "--time", "2026-12-04 14:03"]) == 1


def test_the_panel_command_reads_the_panels_settings(tmp_path, settings):
    from types import SimpleNamespace
    from click.testing import CliRunner
    connlog.store(connlog.open_store(settings["CONNLOG_DATABASE"]),
                  [entry(connlog.parse_time("2026-12-04 14:02:10"), "alice", 40001)])
    result = CliRunner().invoke(connlog.who_command, ["--port", "40001", "--time", "2026-12-04T15:03+01:00"],
                                obj=SimpleNamespace(settings=settings))
    assert result.exit_code == 0 and "client=alice" in result.output
    result = CliRunner().invoke(connlog.who_command, ["--port", "40001", "--time", "teatime"],
                                obj=SimpleNamespace(settings=settings))
    assert result.exit_code == 1 and "is not a time" in result.output

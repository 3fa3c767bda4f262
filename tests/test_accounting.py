"""Traffic accounting: deltas survive every kind of counter reset, buckets add up, quotas and expiry bite."""

import calendar
import datetime
import json
import sys
import types

import pytest

from puqvpn import db as database
from puqvpn import settings as settings_module
from puqvpn.services import accounting
from puqvpn.services import clients as clients_service
from puqvpn.services import interfaces as interfaces_service
from puqvpn.services.system import Context, FakeRunner, Result

NOW = calendar.timegm((2026, 12, 4, 20, 30, 0))      # 2026-12-04T20:30:00Z


@pytest.fixture
def path(tmp_path):
    return tmp_path / "test.sqlite3"


@pytest.fixture
def db(path):
    handle = database.connect(path)
    yield handle
    handle.conn.close()


@pytest.fixture
def setup(db):
    interface = interfaces_service.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                               "endpoint": "vpn.example.com"})
    alice = clients_service.create(db, {"interface": interface["id"], "name": "alice"})
    bob = clients_service.create(db, {"interface": interface["id"], "name": "bob"})
    return interface, alice, bob


class FakeWireGuard:
    """A FakeRunner answering `ip link show` and `wg show dump` from mutable state."""

    def __init__(self, interface):
        self.interface = interface
        self.ifindex = 7
        self.peers = {}              # public key -> (rx, tx, handshake)
        self.runner = FakeRunner(responses={
            ("ip", "-j", "-d", "link", "show", "dev", interface["name"]): self.link,
            ("wg", "show", interface["name"], "dump"): self.dump,
        })

    def link(self, argv, stdin):
        return Result(0, json.dumps([{"ifindex": self.ifindex, "ifname": self.interface["name"], "mtu": 1420,
                                      "flags": ["UP"], "linkinfo": {"info_kind": "tun"}}]), "")

    def dump(self, argv, stdin):
        lines = [f"{self.interface['private_key']}\t{self.interface['public_key']}\t51820\toff"]
        for key, (rx, tx, handshake) in self.peers.items():
            lines.append(f"{key}\t(none)\t192.0.2.9:40000\t10.8.0.2/32\t{handshake}\t{rx}\t{tx}\toff")
        return Result(0, "\n".join(lines) + "\n", "")


def context(db, runner, **settings):
    return Context(db, settings_module.load(environ={}, **settings), runner)


def totals_of(db, client_id):
    row = clients_service.get(db, client_id)
    return row["rx_bytes"], row["tx_bytes"]


def test_counter_resets_never_lose_or_double_count(db, setup):
    interface, alice, _bob = setup
    wg = FakeWireGuard(interface)
    ctx = context(db, wg.runner)
    key = alice["public_key"]

    wg.peers[key] = (1000, 2000, NOW - 5)
    accounting.poll(ctx, now=NOW)
    assert totals_of(db, alice["id"]) == (1000, 2000)

    wg.peers[key] = (1500, 2600, NOW - 5)
    accounting.poll(ctx, now=NOW + 30)
    assert totals_of(db, alice["id"]) == (1500, 2600)

    # Nothing moved: nothing is added.
    accounting.poll(ctx, now=NOW + 60)
    assert totals_of(db, alice["id"]) == (1500, 2600)

    # The interface restarted (new ifindex) and moved more than before: all of it is new traffic.
    wg.ifindex = 9
    wg.peers[key] = (4000, 300, NOW + 80)
    accounting.poll(ctx, now=NOW + 90)
    assert totals_of(db, alice["id"]) == (5500, 2900)

    # The peer was re-added on the same interface: its counter fell, so the reading is the delta.
    wg.peers[key] = (100, 50, NOW + 100)
    accounting.poll(ctx, now=NOW + 120)
    assert totals_of(db, alice["id"]) == (5600, 2950)

    # The peer is gone for a poll (suspended), then comes back: counted from zero, not from the old reading.
    del wg.peers[key]
    accounting.poll(ctx, now=NOW + 150)
    wg.peers[key] = (700, 900, NOW + 170)
    accounting.poll(ctx, now=NOW + 180)
    assert totals_of(db, alice["id"]) == (6300, 3850)

    # The buckets hold exactly the same bytes as the totals.
    daily = db.conn.execute("SELECT SUM(rx), SUM(tx) FROM traffic_daily WHERE client_id = ?", [alice["id"]]).fetchone()
    hourly = db.conn.execute("SELECT SUM(rx), SUM(tx) FROM traffic_hourly WHERE client_id = ?",
                             [alice["id"]]).fetchone()
    assert tuple(daily) == tuple(hourly) == (6300, 3850)


def test_panel_restart_keeps_every_total_and_counts_only_new_bytes(path, setup):
    interface, alice, bob = setup
    first = database.connect(path)
    wg = FakeWireGuard(interface)
    wg.peers = {alice["public_key"]: (10_000, 20_000, NOW), bob["public_key"]: (5, 6, NOW)}
    accounting.poll(context(first, wg.runner), now=NOW)
    first.conn.close()

    # A new process: a new connection, the same database; the tunnel kept counting meanwhile.
    second = database.connect(path)
    wg.peers[alice["public_key"]] = (10_500, 20_700, NOW + 40)
    accounting.poll(context(second, wg.runner), now=NOW + 60)
    assert totals_of(second, alice["id"]) == (10_500, 20_700)
    assert totals_of(second, bob["id"]) == (5, 6)
    second.conn.close()


def test_online_state_and_endpoint_follow_the_handshake(db, setup):
    interface, alice, bob = setup
    wg = FakeWireGuard(interface)
    wg.peers = {alice["public_key"]: (1, 1, NOW - 10), bob["public_key"]: (0, 0, 0)}
    ctx = context(db, wg.runner)
    accounting.poll(ctx, now=NOW)
    row = clients_service.get(db, alice["id"])
    assert row["last_handshake"] == NOW - 10 and row["endpoint"] == "192.0.2.9:40000"
    counts = accounting.online_counts(db, ctx.settings, now=NOW)
    assert counts["online"] == 1 and counts["total"] == 2 and counts["by_interface"] == {"wg0": 1}
    assert accounting.online_counts(db, ctx.settings, now=NOW + 600)["online"] == 0


def test_ikev2_sas_are_counted_per_sa_and_tolerated_when_missing(db, setup, monkeypatch):
    interface, alice, _bob = setup
    db.conn.execute("UPDATE interfaces SET ikev2_enabled = 1")
    wg = FakeWireGuard(interface)
    ctx = context(db, wg.runner)
    sas = []
    fake = types.SimpleNamespace(traffic_samples=lambda ctx: list(sas))
    monkeypatch.setitem(sys.modules, "puqvpn.services.strongswan", fake)
    monkeypatch.setattr(sys.modules["puqvpn.services"], "strongswan", fake, raising=False)

    sas[:] = [{"username": alice["username"], "key": "c1a2b3c4", "rx": 400, "tx": 800, "remote": "198.51.100.7"}]
    accounting.poll(ctx, now=NOW)
    sas[:] = [{"username": alice["username"], "key": "c1a2b3c4", "rx": 600, "tx": 900, "remote": "198.51.100.7"}]
    accounting.poll(ctx, now=NOW + 30)
    assert totals_of(db, alice["id"]) == (600, 900)

    # Rekey: the old child SA is gone, a new one counts from zero.
    sas[:] = [{"username": alice["username"], "key": "d5e6f7a8", "rx": 50, "tx": 70, "remote": "198.51.100.7"}]
    accounting.poll(ctx, now=NOW + 60)
    assert totals_of(db, alice["id"]) == (650, 970)
    sources = [r[0] for r in db.conn.execute("SELECT source FROM counters WHERE client_id = ?", [alice["id"]])]
    assert sources == ["ike:d5e6f7a8"]
    assert clients_service.get(db, alice["id"])["last_handshake"] == NOW + 60

    # charon down: the poll goes on with WireGuard alone and forgets nothing.
    def down(ctx):
        raise ConnectionRefusedError("charon.vici: connection refused")
    fake.traffic_samples = down
    wg.peers[alice["public_key"]] = (10, 20, NOW)
    accounting.poll(ctx, now=NOW + 90)
    assert totals_of(db, alice["id"]) == (660, 990)
    assert db.conn.execute("SELECT COUNT(*) FROM counters WHERE source LIKE 'ike:%'").fetchone()[0] == 1


def test_child_sas_are_read_from_charon_one_source_per_sa(db, setup, monkeypatch):
    from puqvpn.services import strongswan

    interface, alice, bob = setup
    db.conn.execute("UPDATE interfaces SET ikev2_enabled = 1")

    class Session:
        """What vici.Session.list_sas yields: str keys, bytes values, one dict per IKE SA."""

        transport = None

        def list_sas(self):
            yield {strongswan.names(alice["id"])["conn"]: {
                "state": b"ESTABLISHED", "remote-host": b"198.51.100.7", "remote-eap-id": b"alice",
                "child-sas": {"c-1": {"spi-in": b"c1a2b3c4", "bytes-in": b"1500", "bytes-out": b"9000"},
                              "c-2": {"spi-in": b"d5e6f7a8", "bytes-in": b"10", "bytes-out": b"20"}}}}
            yield {"puqvpn-probe": {"state": b"CONNECTING", "child-sas": {}}}

    monkeypatch.setattr(strongswan, "open_session", lambda ctx: Session())
    readings = accounting.child_sa_readings(context(db, FakeRunner()))
    assert [(r["client_id"], r["key"], r["rx"], r["tx"]) for r in readings] == [
        (alice["id"], "c1a2b3c4", 1500, 9000), (alice["id"], "d5e6f7a8", 10, 20)]
    accounting.poll(context(db, FakeWireGuard(interface).runner), now=NOW)
    assert totals_of(db, alice["id"]) == (1510, 9020) and totals_of(db, bob["id"]) == (0, 0)


@pytest.fixture
def applied(monkeypatch):
    """Record apply.client_changed calls instead of touching the system."""
    calls = []
    try:
        from puqvpn.services import apply
    except ImportError:
        apply = types.ModuleType("puqvpn.services.apply")
        monkeypatch.setitem(sys.modules, "puqvpn.services.apply", apply)
        monkeypatch.setattr(sys.modules["puqvpn.services"], "apply", apply, raising=False)
    monkeypatch.setattr(apply, "client_changed", lambda ctx, client_id: calls.append(client_id), raising=False)
    return calls


def test_crossing_the_quota_suspends_live_and_says_why(db, setup, applied):
    interface, alice, bob = setup
    clients_service.update(db, alice["id"], {"quota_gb": "1"})
    wg = FakeWireGuard(interface)
    ctx = context(db, wg.runner)

    wg.peers = {alice["public_key"]: (400_000_000, 500_000_000, NOW), bob["public_key"]: (9 * 10**9, 0, NOW)}
    result = accounting.poll(ctx, now=NOW)
    assert result["suspended"] == [] and applied == []      # 0.9 GB of 1 GB; bob has no quota

    wg.peers[alice["public_key"]] = (450_000_000, 550_000_000, NOW)
    result = accounting.poll(ctx, now=NOW + 30)
    row = clients_service.get(db, alice["id"])
    assert result["suspended"] == [(alice["id"], "quota")]
    assert row["suspended_reason"] == "quota" and row["suspended_at"] == "2026-12-04T20:30:30Z"
    assert applied == [alice["id"]]
    audit = db.conn.execute("SELECT action, target, detail FROM audit_log").fetchall()
    assert [tuple(r) for r in audit] == [("client.suspend", "alice", "quota (automatic)")]

    # The next period begins on the reset day: counters restart and the client comes back.
    next_period = calendar.timegm((2027, 1, 1, 0, 5, 0))
    result = accounting.poll(ctx, now=next_period)
    row = clients_service.get(db, alice["id"])
    assert result["resumed"] == [alice["id"]] and row["suspended_reason"] is None
    assert row["period_rx_bytes"] == 0 and row["period_start"] == "2027-01-01"
    assert row["rx_bytes"] == 450_000_000                  # lifetime totals never reset


def test_expiry_suspends_after_the_last_day(db, setup, applied):
    interface, alice, _bob = setup
    db.conn.execute("UPDATE clients SET expires_at = '2026-12-04' WHERE id = ?", [alice["id"]])
    ctx = context(db, FakeWireGuard(interface).runner)
    assert accounting.check_limits(ctx, now=NOW)["suspended"] == []          # still the 4th
    next_day = calendar.timegm((2026, 12, 5, 0, 0, 1))
    assert accounting.check_limits(ctx, now=next_day)["suspended"] == [(alice["id"], "expired")]
    assert clients_service.get(db, alice["id"])["suspended_reason"] == "expired"
    assert applied == [alice["id"]]
    # An expired client is not resumed by a new quota period.
    assert accounting.check_limits(ctx, now=calendar.timegm((2027, 1, 2, 0, 0, 0)))["resumed"] == []


def test_quota_period_starts_on_the_reset_day():
    day = datetime.date
    assert accounting.period_start(day(2026, 12, 4), 1) == day(2026, 12, 1)
    assert accounting.period_start(day(2026, 12, 4), 15) == day(2026, 11, 15)
    assert accounting.period_start(day(2026, 1, 3), 28) == day(2025, 12, 28)
    assert accounting.period_start(day(2026, 3, 28), 28) == day(2026, 3, 28)


def test_traffic_by_hour_day_and_month_and_roll_up(db, setup):
    interface, alice, bob = setup
    ctx = context(db, FakeRunner(), HOURLY_RETENTION_DAYS="31")
    source = "wg:1"
    moments = [calendar.timegm((2026, 10, 30, 23, 10, 0)), calendar.timegm((2026, 11, 1, 1, 0, 0)),
               calendar.timegm((2026, 11, 1, 1, 40, 0)), calendar.timegm((2026, 12, 4, 20, 0, 0))]
    reading = 0
    for moment in moments:
        reading += 1000
        accounting.record(ctx, [accounting.Sample(alice["id"], source, reading, 2 * reading)], now=moment)
    accounting.record(ctx, [accounting.Sample(bob["id"], source, 10, 10)], now=moments[-1])

    by_day = accounting.traffic(db, alice["id"], datetime.date(2026, 10, 30), datetime.date(2026, 11, 2))
    assert [(r["period"], r["rx"], r["tx"]) for r in by_day] == [
        ("2026-10-30", 1000, 2000), ("2026-10-31", 0, 0), ("2026-11-01", 2000, 4000), ("2026-11-02", 0, 0)]
    by_hour = accounting.traffic(db, alice["id"], datetime.date(2026, 11, 1), datetime.date(2026, 11, 1), "hour")
    assert len(by_hour) == 24 and by_hour[1] == {"period": "2026-11-01T01", "rx": 2000, "tx": 4000}
    by_month = accounting.traffic(db, alice["id"], datetime.date(2026, 10, 1), datetime.date(2026, 12, 31), "month")
    assert [(r["period"], r["rx"]) for r in by_month] == [("2026-10", 1000), ("2026-11", 2000), ("2026-12", 1000)]

    with pytest.raises(ValueError):
        accounting.traffic(db, alice["id"], datetime.date(2026, 1, 1), datetime.date(2025, 1, 1))
    with pytest.raises(ValueError):
        accounting.traffic(db, alice["id"], datetime.date(2020, 1, 1), datetime.date(2026, 1, 1), "hour")

    # Hourly buckets older than the retention go; the days keep every byte.
    assert accounting.rollup(ctx, now=moments[-1]) == 2        # 2026-10-30T23 and 2026-11-01T01
    after = accounting.traffic(db, alice["id"], datetime.date(2026, 10, 1), datetime.date(2026, 12, 31), "month")
    assert after == by_month

    top = accounting.top_clients(db, today=datetime.date(2026, 12, 4))
    assert [(r["name"], r["total"]) for r in top] == [("alice", 3000), ("bob", 20)]
    totals = accounting.totals(db, today=datetime.date(2026, 12, 4))
    assert totals["rx"] == 4010 and totals["month_rx"] == 1010 and totals["today_tx"] == 2010
    assert accounting.interface_totals(db)[0]["rx"] == 4010


def test_nothing_is_read_when_the_system_is_off(db, setup):
    interface, alice, _bob = setup
    wg = FakeWireGuard(interface)
    ctx = context(db, wg.runner, SYSTEM_APPLY="0")
    assert accounting.poll(ctx, now=NOW) == {"clients": 0, "suspended": [], "resumed": []}
    assert wg.runner.calls == []


# -- charts ---------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def test_daily_and_monthly_charts_are_svg_with_one_bar_per_busy_period(db, setup):
    import xml.etree.ElementTree as ElementTree

    from puqvpn.services import charts

    _interface, alice, _bob = setup
    ctx = context(db, FakeRunner())
    for day, reading in ((2, 3_000_000), (3, 4_000_000), (4, 9_000_000)):
        accounting.record(ctx, [accounting.Sample(alice["id"], "wg:1", reading // 3, reading)],
                          now=calendar.timegm((2026, 12, day, 12, 0, 0)))
    daily = ElementTree.fromstring(charts.client_daily_chart(db, alice["id"], today=datetime.date(2026, 12, 4)))
    downloads = [r for r in daily.iter(f"{SVG}rect") if r.get("class") == "chart-down"]
    assert len(downloads) == 3 + 1                       # three busy days and the legend swatch
    tips = [t.text for t in daily.iter(f"{SVG}title")]
    assert "12-04: 5.0 MB down, 1.7 MB up" in tips
    monthly = ElementTree.fromstring(charts.client_monthly_chart(db, alice["id"], today=datetime.date(2026, 12, 4)))
    assert "26-12: 9.0 MB down, 3.0 MB up" in [t.text for t in monthly.iter(f"{SVG}title")]


def test_chart_text_is_escaped_and_an_empty_chart_says_so():
    import xml.etree.ElementTree as ElementTree

    from puqvpn.services import charts

    hostile = '<script>alert("x")</script>'
    svg = charts.bar_chart([{"period": hostile, "rx": 5, "tx": 7}], hostile)
    assert "<script>" not in svg
    root = ElementTree.fromstring(svg)
    assert hostile in [t.text for t in root.iter(f"{SVG}text")]       # shown as text, not run
    empty = ElementTree.fromstring(charts.bar_chart([], "Nothing"))
    assert "no traffic yet" in [t.text for t in empty.iter(f"{SVG}text")]
    assert charts.format_bytes(999) == "999 B" and charts.format_bytes(1_234_567) == "1.2 MB"
    assert charts.format_bytes(250 * 10**9) == "250 GB"


def test_an_enormous_traffic_range_is_refused_at_once(db):
    import datetime

    from puqvpn.services import accounting
    with pytest.raises(ValueError, match="at most"):
        accounting.traffic(db, 1, datetime.date(1, 1, 1), datetime.date(9999, 12, 31), "hour")

"""Traffic accounting: counters -> lifetime totals, period (quota) totals, hourly and daily buckets.

The background job calls ``poll(ctx)`` every POLL_INTERVAL seconds.  It reads
one ``wg show <if> dump`` per enabled interface and, when an interface has
IKEv2 on, charon's child SAs over VICI (skipped while charon is down), then ``record()`` adds the deltas in one transaction
and ``check_limits()`` suspends clients over their quota or past their expiry.

Counter resets.  The ``counters`` table keeps the last reading per
(client, source).  A reading below the last one means the counter restarted
(interface restart, peer re-added, new SA), so the delta is the reading
itself.  Sources are named so a restart usually also starts a new source:
``wg:<ifindex>`` (a recreated interface gets a new ifindex) and
``ike:<key>`` (one per child SA).  A new source counts from zero.  A peer
missing from a live interface's dump has lost its counters, so its row is
zeroed.  The table is in the database, so a panel restart between polls
neither loses nor repeats anything.

Every delta goes to the hourly and to the daily bucket in the same
transaction, so the daily table is always complete; ``rollup()`` then only
deletes hourly buckets older than HOURLY_RETENTION_DAYS.

The background jobs call poll(ctx) every POLL_INTERVAL, check_limits(ctx)
(also run at the end of each poll, so a quota bites at once) and rollup(ctx).

Quota sizes are decimal: 1 GB = 10**9 bytes, rx + tx both count.
"""

import calendar
import datetime
import itertools
import logging
import time
from dataclasses import dataclass

from ..db import transaction
from .system import CommandError

log = logging.getLogger(__name__)

GB = 10**9


@dataclass
class Sample:
    """One counter reading: what `client_id` moved through `source` since that source started."""

    client_id: int
    source: str
    rx: int                       # received by the server (the client's upload)
    tx: int                       # sent by the server (the client's download)
    handshake: int = None         # unix time of the last handshake / SA activity, if known
    endpoint: str = None          # remote address:port, if known


def _utc(now):
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc)


# -- reading counters ---------------------------------------------------------------

def wireguard_samples(ctx, now):
    """(samples, zeroed): readings from every enabled interface, and (client_id, source) whose peer is gone."""
    from . import wireguard

    samples, zeroed = [], []
    clients_by_interface = {}
    for row in ctx.db.conn.execute("SELECT id, interface_id, public_key, suspended_reason FROM clients"):
        clients_by_interface.setdefault(row[1], {})[row[2]] = (row[0], row[3])
    for interface in ctx.db.query("SELECT id, name FROM interfaces WHERE enabled ORDER BY id"):
        try:
            link = wireguard.link(ctx, interface["name"])
            if link is None:
                continue
            peers = wireguard.dump(ctx, interface["name"], now=now)
        except (CommandError, RuntimeError) as error:
            log.warning("accounting: cannot read %s: %s", interface["name"], error)
            continue
        source = f"wg:{link.get('ifindex', 0)}"
        known = clients_by_interface.get(interface["id"], {})
        for key, (client_id, _suspended) in known.items():
            peer = peers.get(key)
            if peer is None:
                zeroed.append((client_id, source))
                continue
            samples.append(Sample(client_id, source, int(peer["rx"]), int(peer["tx"]),
                                  int(peer["latest_handshake"]) or None, peer.get("endpoint")))
    return samples, zeroed


def _text(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def child_sa_readings(ctx):
    """One reading per established child SA, straight from charon's list_sas over VICI.

    [{client_id, username, key, rx, tx, remote}]: ``key`` is the child SA's
    inbound SPI, random per SA, so a rekey or a charon restart never reuses
    one; ``rx`` is bytes-in (the client's upload), ``tx`` bytes-out.
    Raises when charon cannot be reached.
    """
    from . import strongswan

    session = strongswan.open_session(ctx)
    try:
        listing = list(session.list_sas())
    finally:
        try:
            session.transport.socket.close()
        except (AttributeError, OSError):
            pass
    readings = []
    for entry in listing:
        for name, ike in entry.items():
            if _text(ike.get("state")) != "ESTABLISHED":
                continue
            client_id = strongswan.client_id_of(_text(name))
            username = _text(ike.get("remote-eap-id") or ike.get("remote-id"))
            for child in (ike.get("child-sas") or {}).values():
                readings.append({"client_id": client_id, "username": username,
                                 "key": _text(child.get("spi-in")) or f"u{_text(child.get('uniqueid'))}",
                                 "rx": int(_text(child.get("bytes-in", 0)) or 0),
                                 "tx": int(_text(child.get("bytes-out", 0)) or 0),
                                 "remote": _text(ike.get("remote-host"))})
    return readings


def ikev2_samples(ctx, now):
    """Readings of the IKEv2 child SAs, or None when they cannot be read (no IKEv2, charon down).

    Uses ``strongswan.traffic_samples(ctx)`` if that module offers it, else
    reads charon directly (``child_sa_readings``).  Either way an entry names
    its client by ``client_id`` or ``username``.
    """
    try:
        from . import strongswan
    except ImportError:
        return None
    if not any(True for _ in ctx.db.query("SELECT 1 FROM interfaces WHERE ikev2_enabled AND enabled LIMIT 1")):
        return None
    reader = getattr(strongswan, "traffic_samples", None) or child_sa_readings
    try:
        entries = reader(ctx)
    except Exception as error:  # charon down, socket missing, VICI error: try again next poll
        log.warning("accounting: cannot read IKEv2 SAs: %s", error)
        return None
    by_user = {row[0]: row[1] for row in ctx.db.conn.execute("SELECT username, id FROM clients")}
    samples = []
    for entry in entries or []:
        client_id = entry.get("client_id") or by_user.get(entry.get("username"))
        if client_id is None:
            continue
        samples.append(Sample(int(client_id), f"ike:{entry['key']}", int(entry.get("rx") or 0),
                              int(entry.get("tx") or 0), int(now), entry.get("remote")))
    return samples


# -- recording ------------------------------------------------------------------------

def period_start(day, reset_day):
    """The first day of the quota period that contains `day`."""
    reset_day = max(1, min(28, int(reset_day or 1)))
    if day.day >= reset_day:
        return day.replace(day=reset_day)
    previous = (day.replace(day=1) - datetime.timedelta(days=1))
    return previous.replace(day=reset_day)


def record(ctx, samples, zeroed=(), ike_complete=False, now=None):
    """Add the deltas of `samples` to totals, period counters and buckets, in one transaction.

    `zeroed` lists (client_id, source) whose counters are known to be gone.
    With `ike_complete`, IKEv2 sources missing from `samples` are forgotten
    (their SAs ended).  Returns {client_id: (rx_delta, tx_delta)} for clients that moved bytes.
    """
    now = time.time() if now is None else now
    stamp = _utc(now)
    hour, day = stamp.strftime("%Y-%m-%dT%H"), stamp.strftime("%Y-%m-%d")
    conn = ctx.db.conn
    deltas = {}
    with transaction(ctx.db):
        last = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute("SELECT client_id, source, rx, tx FROM counters")}
        status = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, last_handshake, endpoint FROM clients")}
        counter_rows, new_sources, status_changed = [], [], set()
        for s in samples:
            if s.client_id not in status:
                continue                      # deleted meanwhile
            previous = last.get((s.client_id, s.source))
            if previous is None:
                rx, tx = s.rx, s.tx
                new_sources.append((s.client_id, s.source))
            else:
                rx = s.rx - previous[0] if s.rx >= previous[0] else s.rx
                tx = s.tx - previous[1] if s.tx >= previous[1] else s.tx
            if previous != (s.rx, s.tx):
                counter_rows.append((s.client_id, s.source, s.rx, s.tx, int(now)))
            if rx or tx:
                old = deltas.get(s.client_id, (0, 0))
                deltas[s.client_id] = (old[0] + rx, old[1] + tx)
            handshake, endpoint = status[s.client_id]
            new_handshake = max(handshake or 0, s.handshake or 0) or None
            new_endpoint = s.endpoint or endpoint
            if (new_handshake, new_endpoint) != (handshake, endpoint):
                status[s.client_id] = (new_handshake, new_endpoint)
                status_changed.add(s.client_id)

        for client_id, source in new_sources:
            kind = source.split(":", 1)[0]
            conn.execute("DELETE FROM counters WHERE client_id = ? AND source LIKE ? AND source != ?",
                         [client_id, kind + ":%", source])
        if ike_complete:
            live = {(s.client_id, s.source) for s in samples if s.source.startswith("ike:")}
            stale = [key for key in last if key[1].startswith("ike:") and key not in live]
            conn.executemany("DELETE FROM counters WHERE client_id = ? AND source = ?", stale)
        conn.executemany(
            "INSERT INTO counters (client_id, source, rx, tx, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (client_id, source) DO UPDATE SET rx = excluded.rx, tx = excluded.tx, "
            "updated_at = excluded.updated_at", counter_rows)
        conn.executemany("UPDATE counters SET rx = 0, tx = 0, updated_at = ? WHERE client_id = ? AND source = ? "
                         "AND (rx != 0 OR tx != 0)", [(int(now), c, s) for c, s in zeroed])
        conn.executemany("UPDATE clients SET last_handshake = ?, endpoint = ? WHERE id = ?",
                         [(*status[c], c) for c in status_changed if c not in deltas])

        _roll_periods(conn, stamp.date())
        # Totals and status in one statement per client that moved bytes.
        rows = [(rx, tx, rx, tx, *status[client_id], client_id) for client_id, (rx, tx) in deltas.items()]
        conn.executemany("UPDATE clients SET rx_bytes = rx_bytes + ?, tx_bytes = tx_bytes + ?, "
                         "period_rx_bytes = period_rx_bytes + ?, period_tx_bytes = period_tx_bytes + ?, "
                         "last_handshake = ?, endpoint = ? WHERE id = ?", rows)
        for table, column, key in (("traffic_hourly", "hour", hour), ("traffic_daily", "day", day)):
            conn.executemany(
                f"INSERT INTO {table} (client_id, {column}, rx, tx) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (client_id, {column}) DO UPDATE SET rx = rx + excluded.rx, tx = tx + excluded.tx",
                [(client_id, key, rx, tx) for client_id, (rx, tx) in deltas.items()])
    return deltas


def _roll_periods(conn, today):
    """Start a new quota period for clients whose reset day has come (period counters back to 0).

    One statement over a table of the (at most 28) reset days: one pass in SQLite.
    """
    days = [row[0] for row in conn.execute("SELECT DISTINCT quota_reset_day FROM clients")]
    if not days:
        return
    starts = [(day, period_start(today, day).isoformat()) for day in days]
    values = ", ".join("(?, ?)" for _ in starts)
    conn.execute(
        f"WITH p(day, start) AS (VALUES {values}) "
        "UPDATE clients SET period_rx_bytes = 0, period_tx_bytes = 0, period_start = p.start FROM p "
        "WHERE clients.quota_reset_day IS p.day AND (clients.period_start IS NULL OR clients.period_start < p.start)",
        [value for pair in starts for value in pair])


def poll(ctx, now=None):
    """Read every counter once and record it, then enforce quotas and expiry at once.

    Returns {'clients': how many moved bytes, 'suspended': [...], 'resumed': [...]}.
    Does nothing with SYSTEM_APPLY=0 (there is no live system to read).
    """
    if not ctx.live:
        return {"clients": 0, "suspended": [], "resumed": []}
    now = time.time() if now is None else now
    samples, zeroed = wireguard_samples(ctx, now)
    ike = ikev2_samples(ctx, now)
    deltas = record(ctx, samples + (ike or []), zeroed, ike_complete=ike is not None, now=now)
    changes = check_limits(ctx, now=now, periods_rolled=True)
    return {"clients": len(deltas), **changes}


# -- quotas and expiry ----------------------------------------------------------------------

def over_quota(client):
    quota = float(client["quota_gb"] or 0)
    return quota > 0 and client["period_rx_bytes"] + client["period_tx_bytes"] >= quota * GB


def is_expired(client, today):
    return bool(client["expires_at"]) and client["expires_at"] < today.isoformat()


def check_limits(ctx, now=None, periods_rolled=False):
    """Suspend active clients past their expiry date or over their monthly quota; resume the
    quota-suspended ones whose new period has begun.  Each change goes live through apply.

    Returns {'suspended': [(client_id, reason)], 'resumed': [client_id]}.
    """
    now = time.time() if now is None else now
    stamp = _utc(now)
    at = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    suspended, resumed = [], []
    with transaction(ctx.db):
        if not periods_rolled:
            _roll_periods(ctx.db.conn, stamp.date())
        candidates = ctx.db.query(
            "SELECT * FROM clients WHERE suspended_reason IS NULL AND ((expires_at IS NOT NULL AND expires_at < ?) "
            "OR (quota_gb > 0 AND period_rx_bytes + period_tx_bytes >= quota_gb * ?))",
            [stamp.date().isoformat(), GB])
        for client in list(candidates):
            reason = "expired" if is_expired(client, stamp.date()) else "quota" if over_quota(client) else None
            if reason:
                ctx.db.execute("UPDATE clients SET suspended_reason = ?, suspended_at = ?, updated_at = ? "
                               "WHERE id = ?", [reason, at, at, client["id"]])
                suspended.append((client["id"], reason))
        for client in ctx.db.query("SELECT * FROM clients WHERE suspended_reason = 'quota'"):
            if not over_quota(client) and not is_expired(client, stamp.date()):
                ctx.db.execute("UPDATE clients SET suspended_reason = NULL, suspended_at = NULL, updated_at = ? "
                               "WHERE id = ?", [at, client["id"]])
                resumed.append(client["id"])
        for client_id, reason in suspended:
            _audit(ctx, at, "client.suspend", client_id, f"{reason} (automatic)")
        for client_id in resumed:
            _audit(ctx, at, "client.resume", client_id, "new quota period (automatic)")
    for client_id in [c for c, _r in suspended] + resumed:
        _apply_client(ctx, client_id)
    return {"suspended": suspended, "resumed": resumed}


def _audit(ctx, at, action, client_id, detail):
    name = next(ctx.db.query("SELECT name FROM clients WHERE id = ?", [client_id]), {}).get("name", str(client_id))
    ctx.db.execute("INSERT INTO audit_log (at, actor, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                   [at, "system", action, name, "ok", detail])


def _apply_client(ctx, client_id):
    """Push one client's new state live; a failure is kept for apply's retry, never raised here."""
    try:
        from . import apply
        apply.client_changed(ctx, client_id)
    except Exception as error:  # the database is the truth; reconcile converges later
        log.warning("accounting: could not apply client %s: %s", client_id, error)


# -- retention ----------------------------------------------------------------------------

def rollup(ctx, now=None):
    """Delete hourly buckets older than HOURLY_RETENTION_DAYS (their bytes are already in the daily ones).

    The background job runs it hourly.  It deletes client by client so each
    delete is a primary-key range, not a scan of every hourly row.
    Returns how many rows went.
    """
    now = time.time() if now is None else now
    days = int(ctx.settings.get("HOURLY_RETENTION_DAYS", 31))
    cutoff = (_utc(now) - datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H")
    conn = ctx.db.conn
    with transaction(ctx.db):
        before = conn.total_changes
        conn.executemany("DELETE FROM traffic_hourly WHERE client_id = ? AND hour < ?",
                         [(row[0], cutoff) for row in conn.execute("SELECT id FROM clients")])
        return conn.total_changes - before


# -- queries for pages, API and metrics --------------------------------------------------------

def _periods(start, end, granularity):
    if granularity == "hour":
        step, moment = datetime.timedelta(hours=1), datetime.datetime.combine(start, datetime.time())
        last = datetime.datetime.combine(end, datetime.time(23))
        while moment <= last:
            yield moment.strftime("%Y-%m-%dT%H")
            moment += step
    elif granularity == "day":
        moment = start
        while moment <= end:
            yield moment.isoformat()
            moment += datetime.timedelta(days=1)
    else:
        year, month = start.year, start.month
        while (year, month) <= (end.year, end.month):
            yield f"{year:04d}-{month:02d}"
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)


MAX_POINTS = {"hour": 24 * 93, "day": 3 * 366, "month": 1200}


def traffic(db, client_id, start, end, granularity="day"):
    """[{period, rx, tx}] for one client from `start` to `end` (dates, inclusive), every period
    present (zeros where nothing moved).  granularity: 'hour', 'day' or 'month'.
    """
    if granularity not in MAX_POINTS:
        raise ValueError("granularity must be hour, day or month")
    if end < start:
        raise ValueError("the end date is before the start date")
    # Stop after one period too many, so a huge range costs nothing.
    periods = list(itertools.islice(_periods(start, end, granularity), MAX_POINTS[granularity] + 1))
    if len(periods) > MAX_POINTS[granularity]:
        raise ValueError(f"at most {MAX_POINTS[granularity]} {granularity}s per request")
    if granularity == "hour":
        rows = db.conn.execute("SELECT hour, rx, tx FROM traffic_hourly WHERE client_id = ? AND hour BETWEEN ? AND ?",
                               [client_id, periods[0], periods[-1]])
    elif granularity == "day":
        rows = db.conn.execute("SELECT day, rx, tx FROM traffic_daily WHERE client_id = ? AND day BETWEEN ? AND ?",
                               [client_id, periods[0], periods[-1]])
    else:
        rows = db.conn.execute("SELECT substr(day, 1, 7) AS month, SUM(rx), SUM(tx) FROM traffic_daily "
                               "WHERE client_id = ? AND day BETWEEN ? AND ? GROUP BY month",
                               [client_id, periods[0] + "-01", periods[-1] + "-31"])
    found = {r[0]: (r[1], r[2]) for r in rows}
    return [{"period": p, "rx": found.get(p, (0, 0))[0], "tx": found.get(p, (0, 0))[1]} for p in periods]


def month_bounds(today):
    first = today.replace(day=1)
    last = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    return first, last


def top_clients(db, today=None, limit=10):
    """The clients that moved the most bytes this calendar month: [{id, name, interface, rx, tx, total}]."""
    today = today or _utc(time.time()).date()
    first, last = month_bounds(today)
    rows = db.query(
        "SELECT c.id, c.name, i.name AS interface, SUM(t.rx) AS rx, SUM(t.tx) AS tx, SUM(t.rx + t.tx) AS total "
        "FROM traffic_daily t JOIN clients c ON c.id = t.client_id JOIN interfaces i ON i.id = c.interface_id "
        "WHERE t.day BETWEEN ? AND ? GROUP BY c.id ORDER BY total DESC, c.name LIMIT ?",
        [first.isoformat(), last.isoformat(), int(limit)])
    return list(rows)


def totals(db, today=None):
    """{'rx', 'tx' (lifetime), 'month_rx', 'month_tx', 'today_rx', 'today_tx'} over every client."""
    today = today or _utc(time.time()).date()
    first, last = month_bounds(today)
    life = db.conn.execute("SELECT COALESCE(SUM(rx_bytes), 0), COALESCE(SUM(tx_bytes), 0) FROM clients").fetchone()
    month = db.conn.execute("SELECT COALESCE(SUM(rx), 0), COALESCE(SUM(tx), 0) FROM traffic_daily "
                            "WHERE day BETWEEN ? AND ?", [first.isoformat(), last.isoformat()]).fetchone()
    day = db.conn.execute("SELECT COALESCE(SUM(rx), 0), COALESCE(SUM(tx), 0) FROM traffic_daily WHERE day = ?",
                          [today.isoformat()]).fetchone()
    return {"rx": life[0], "tx": life[1], "month_rx": month[0], "month_tx": month[1],
            "today_rx": day[0], "today_tx": day[1]}


def interface_totals(db):
    """[{id, name, clients, rx, tx}] lifetime bytes per interface."""
    return list(db.query(
        "SELECT i.id, i.name, COUNT(c.id) AS clients, COALESCE(SUM(c.rx_bytes), 0) AS rx, "
        "COALESCE(SUM(c.tx_bytes), 0) AS tx FROM interfaces i LEFT JOIN clients c ON c.interface_id = i.id "
        "GROUP BY i.id ORDER BY i.name"))


def is_online(client, now, timeout):
    handshake = client.get("last_handshake") or 0
    return not client.get("suspended_reason") and handshake > 0 and now - handshake < timeout


def online_counts(db, settings, now=None):
    """{'online', 'active', 'suspended', 'total', 'by_interface': {name: online}}."""
    now = time.time() if now is None else now
    since = now - int(settings.get("ONLINE_TIMEOUT", 180))
    by_interface = {r[0]: r[1] for r in db.conn.execute(
        "SELECT i.name, COUNT(c.id) FROM interfaces i LEFT JOIN clients c ON c.interface_id = i.id "
        "AND c.suspended_reason IS NULL AND c.last_handshake > ? GROUP BY i.id", [since])}
    row = db.conn.execute(
        "SELECT COUNT(*), SUM(suspended_reason IS NULL), SUM(suspended_reason IS NOT NULL), "
        "SUM(suspended_reason IS NULL AND last_handshake > ?) FROM clients", [since]).fetchone()
    return {"total": row[0], "active": row[1] or 0, "suspended": row[2] or 0, "online": row[3] or 0,
            "by_interface": by_interface}

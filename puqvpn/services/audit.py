"""The audit log: who changed what, when, from where, and whether it worked.

Every change through the UI, the API or the CLI, and every failed login, is
a row.  Secrets never get in: ``record`` masks anything that looks like a
key, password, token or code before writing, so a careless detail cannot
leak one.

    audit.record(db, "alice", "192.0.2.7", "clients.new", "client=bob", "ok")
    audit.record(db, "cli", "", "cli.reset-password", "user=alice", "ok")
    audit.record(db, "token:deploy", "192.0.2.9", "api.clients.create", "client=bob", "failed",
                 "name: a name may only contain letters ...")
"""

import datetime
import re

from ..db import transaction
from .util import now_iso

OUTCOMES = ("ok", "denied", "failed")
MAX_FIELD = 200
MAX_DETAIL = 1000

# name=value or "name": "value" pairs whose value is a secret.
SECRET_NAMES = r"[\w-]*(?:password|passwd|secret|token|private[_-]?key|preshared[_-]?key|psk|totp|code|csrf)[\w-]*"
_PAIR = re.compile(rf"""(?ix)
    (?P<name>["']?{SECRET_NAMES}["']?)
    (?P<sep>\s*[=:]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s,;&}}]+)""")
# A WireGuard key (32 bytes base64), a PEM block, a bearer token.
_WG_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.S)
_BEARER = re.compile(r"(?i)\bbearer\s+\S+")


def scrub(text):
    """The text with every secret-looking value replaced by ***."""
    text = "" if text is None else str(text)
    text = _PEM.sub("***", text)
    text = _BEARER.sub("Bearer ***", text)
    text = _PAIR.sub(lambda m: f"{m['name']}{m['sep']}***", text)
    text = _WG_KEY.sub("***", text)
    return text


def _clean(text, limit, secret_free=False):
    # One line, printable, bounded: the log is read in a table and may be exported.
    text = str(text) if secret_free else scrub(text)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:limit]


def record(db, actor, source_ip, action, target="", outcome="ok", detail=""):
    """Append one entry; returns its id. ``outcome`` is ok, denied or failed."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    # Who, where and what are names (``token:NAME`` is a token's name, not the token);
    # the target (URL arguments, e.g. a share link's token) and the detail are scrubbed.
    row = {"at": now_iso(), "actor": _clean(actor or "anonymous", MAX_FIELD, secret_free=True),
           "source_ip": _clean(source_ip or "", 64, secret_free=True),
           "action": _clean(action, MAX_FIELD, secret_free=True),
           "target": _clean(target or "", MAX_FIELD), "outcome": outcome,
           "detail": _clean(detail or "", MAX_DETAIL)}
    with transaction(db):
        cursor = db.conn.execute(
            "INSERT INTO audit_log (at, actor, source_ip, action, target, outcome, detail) "
            "VALUES (:at, :actor, :source_ip, :action, :target, :outcome, :detail)", row)
    return cursor.lastrowid


def _day_start(value):
    day = datetime.date.fromisoformat(value)
    return f"{day.isoformat()}T00:00:00Z"


def _day_after(value):
    day = datetime.date.fromisoformat(value) + datetime.timedelta(days=1)
    return f"{day.isoformat()}T00:00:00Z"


def search(db, actor="", action="", outcome="", since=None, until=None, page=1, per_page=50):
    """Entries newest first, filtered; returns (rows, total).

    ``actor`` matches exactly, ``action`` as a prefix (``clients.`` finds every
    client change), ``since``/``until`` are YYYY-MM-DD days, both included.
    """
    where, params = [], []
    if actor:
        where.append("actor = ?")
        params.append(actor)
    if action:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if outcome:
        where.append("outcome = ?")
        params.append(outcome)
    if since:
        where.append("at >= ?")
        params.append(_day_start(since))
    if until:
        where.append("at < ?")
        params.append(_day_after(until))
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = db.execute(f"SELECT count(*) FROM audit_log {clause}", params).fetchone()[0]
    rows = list(db.query(f"SELECT * FROM audit_log {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                         [*params, per_page, (max(1, page) - 1) * per_page]))
    return rows, total


def actors(db):
    return [row["actor"] for row in db.query("SELECT DISTINCT actor FROM audit_log ORDER BY actor")]


def failures_since(db, since_iso, source_ip=None, actor=None, action="auth.login", detail_prefix=""):
    """Timestamps of denied attempts since a time, newest first (the login throttle reads these)."""
    where, params = ["action = ?", "outcome = 'denied'", "at >= ?"], [action, since_iso]
    if source_ip is not None:
        where.append("source_ip = ?")
        params.append(source_ip)
    if actor is not None:
        where.append("actor = ?")
        params.append(actor)
    if detail_prefix:
        where.append("substr(detail, 1, ?) = ?")
        params += [len(detail_prefix), detail_prefix]
    return [row[0] for row in db.execute(
        f"SELECT at FROM audit_log WHERE {' AND '.join(where)} ORDER BY at DESC", params).fetchall()]


def last_success(db, actor, action="auth.login"):
    row = db.execute("SELECT max(at) FROM audit_log WHERE action = ? AND actor = ? AND outcome = 'ok'",
                     [action, actor]).fetchone()
    return row[0] if row else None


def prune(ctx, now=None):
    """Delete entries older than AUDIT_RETENTION_DAYS (0 keeps everything); returns how many."""
    days = int(ctx.settings.get("AUDIT_RETENTION_DAYS", 365))
    if days <= 0:
        return 0
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cutoff = (now - datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ctx.db.execute("DELETE FROM audit_log WHERE at < ?", [cutoff]).rowcount

"""One-time share links: a client's VPN setup behind a long random URL, for a limited time and number of uses.

The token (256 bits) is stored only as its SHA-256.  A *use* is one visit:
pressing "Show my VPN setup" on the link's page.  That visit gets a signed
key, valid for ``VISIT_MINUTES``, which the page's download links carry, so
downloading the .conf, the CA and a profile during the same visit does not
burn more uses.  Link previews (messengers fetch a URL to draw a card) only
see the landing page, so they burn nothing.
"""

import datetime
import hashlib
import hmac
import secrets

from ..db import transaction
from . import validation
from .util import now_iso
from .validation import Checker

DEFAULT_HOURS = 72
MAX_HOURS = 24 * 30
MAX_USES = 100
VISIT_MINUTES = 30


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _parse(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def get(db, link_id):
    return next(db.query("SELECT * FROM share_links WHERE id = ?", [link_id]), None)


def create(db, client_id, expires_in_hours=DEFAULT_HOURS, max_uses=1, now=None):
    """Create a link for a client; returns (row, token).  The token is never stored or shown again."""
    check = Checker()
    hours = check.field("expires_in_hours", validation.integer,
                        DEFAULT_HOURS if expires_in_hours in (None, "") else expires_in_hours,
                        1, MAX_HOURS, "the lifetime in hours")
    uses = check.field("max_uses", validation.integer, 1 if max_uses in (None, "") else max_uses,
                       1, MAX_USES, "the number of uses")
    check.done()
    now = now or _utcnow()
    token = secrets.token_urlsafe(32)
    with transaction(db):
        if next(db.query("SELECT 1 FROM clients WHERE id = ?", [client_id]), None) is None:
            raise LookupError("no such client")
        cursor = db.execute(
            "INSERT INTO share_links (client_id, token_hash, expires_at, max_uses, created_at) VALUES (?, ?, ?, ?, ?)",
            [client_id, hash_token(token), _iso(now + datetime.timedelta(hours=hours)), uses, _iso(now)])
        return get(db, cursor.lastrowid), token


def find(db, token):
    """The link row for a token from a URL, or None.  Compared in constant time after the indexed lookup."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    row = next(db.query("SELECT * FROM share_links WHERE token_hash = ?", [digest]), None)
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return row


def state(row, now=None):
    """active, revoked, expired or used_up."""
    now = now or _utcnow()
    if row["revoked_at"]:
        return "revoked"
    if _parse(row["expires_at"]) <= now:
        return "expired"
    if row["uses"] >= row["max_uses"]:
        return "used_up"
    return "active"


def consume(db, row, now=None):
    """Count one use if the link is still valid; returns the updated row, or None if it is not."""
    now = now or _utcnow()
    with transaction(db):
        # One statement decides, so two visits racing for the last use cannot both win.
        changed = db.execute(
            "UPDATE share_links SET uses = uses + 1 WHERE id = ? AND revoked_at IS NULL "
            "AND uses < max_uses AND expires_at > ?", [row["id"], _iso(now)]).rowcount
        return get(db, row["id"]) if changed else None


def revoke(db, link_id):
    """Revoke a link; returns the row, or None if there is no such link."""
    with transaction(db):
        db.execute("UPDATE share_links SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now_iso(), link_id])
        return get(db, link_id)


def list_links(db, client_id=None, active_only=False, now=None):
    """Links, newest first, each with its client's name and its state."""
    where, params = [], []
    if client_id is not None:
        where.append("s.client_id = ?")
        params.append(client_id)
    if active_only:
        where.append("s.revoked_at IS NULL AND s.uses < s.max_uses AND s.expires_at > ?")
        params.append(_iso(now or _utcnow()))
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    rows = list(db.query(f"SELECT s.*, c.name AS client_name FROM share_links s "
                         f"JOIN clients c ON c.id = s.client_id {clause} ORDER BY s.id DESC", params))
    for row in rows:
        row["state"] = state(row, now)
    return rows


# ------------------------------------------------------------------ visits

def _visit_mac(secret, row, until):
    message = f"share-visit:{row['id']}:{row['token_hash']}:{until}".encode()
    return hmac.new(secret.encode() if isinstance(secret, str) else secret, message, hashlib.sha256).hexdigest()[:32]


def visit_key(secret, row, now=None):
    """A signed key for the downloads of one visit: ``<until>.<mac>``."""
    now = now or _utcnow()
    until = int((now + datetime.timedelta(minutes=VISIT_MINUTES)).timestamp())
    return f"{until}.{_visit_mac(secret, row, until)}"


def visit_valid(secret, row, key, now=None):
    """True if ``key`` was handed out for this link, is unexpired, and the link is neither revoked nor expired."""
    now = now or _utcnow()
    if row is None or not key or row["revoked_at"] or _parse(row["expires_at"]) <= now:
        return False
    until, _, mac = key.partition(".")
    if not until.isdigit() or int(until) < now.timestamp():
        return False
    return hmac.compare_digest(mac, _visit_mac(secret, row, int(until)))

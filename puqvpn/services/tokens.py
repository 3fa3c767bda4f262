"""API tokens: created once, stored only as a hash, checked on every API request.

A token is 256 bits from ``secrets``, so a plain SHA-256 of it is enough to
store (no salt or slow hash needed: there is nothing to guess).  Each token
has a role (admin, operator, viewer), an optional source-address allow list,
an optional expiry date (the end of that day, UTC) and a last-used time.
"""

import datetime
import hashlib
import hmac
import ipaddress
import secrets

from ..db import transaction
from . import validation
from .util import now_iso
from .validation import Checker

ROLES = ("admin", "operator", "viewer")
RANK = {"viewer": 1, "operator": 2, "admin": 3}
PREFIX = "pqv_"

# last_used_at is written at most this often per token, so reads stay reads.
LAST_USED_RESOLUTION = datetime.timedelta(seconds=60)


class TokenError(Exception):
    """The request is not allowed: ``status`` is 401 or 403, ``code`` a short error code."""

    def __init__(self, status, code, message):
        self.status = status
        self.code = code
        super().__init__(message)


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def generate():
    return PREFIX + secrets.token_urlsafe(32)


def get(db, key):
    column = "id" if isinstance(key, int) else "name"
    return next(db.query(f"SELECT * FROM api_tokens WHERE {column} = ?", [key]), None)


def list_all(db):
    return list(db.query("SELECT * FROM api_tokens ORDER BY revoked_at IS NOT NULL, name"))


def allowed_networks(row):
    return [ipaddress.ip_network(item, strict=False)
            for item in validation.cidr_list(row["allowed_ips"], required=False).split(", ") if item]


def _role(value):
    value = validation._text(value) or "admin"
    if value not in ROLES:
        raise validation.FieldError("choose admin, operator or viewer")
    return value


def _name(value):
    value = validation.label(value)
    if not value:
        raise validation.FieldError("a name is required, e.g. the billing system it is for")
    return value


def create(db, name, role="admin", allowed_ips="", expires_at=None):
    """Create a token; returns (row, token).  The token itself is never stored or shown again."""
    check = Checker()
    clean = {
        "name": check.field("name", _name, name),
        "role": check.field("role", _role, role),
        "allowed_ips": check.field("allowed_ips", validation.cidr_list, allowed_ips, required=False),
        "expires_at": check.field("expires_at", validation.date, expires_at, allow_past=False),
    }
    with transaction(db):
        if clean["name"] and get(db, clean["name"]):
            check.error("name", f"a token named {clean['name']} already exists")
        check.done()
        token = generate()
        clean.update(token_hash=hash_token(token), created_at=now_iso())
        cursor = db.execute(f"INSERT INTO api_tokens ({', '.join(clean)}) VALUES ({', '.join('?' * len(clean))})",
                            list(clean.values()))
        return get(db, cursor.lastrowid), token


def revoke(db, token_id):
    """Revoke a token (kept, listed as revoked); returns the row, or None if there is no such token."""
    with transaction(db):
        db.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [now_iso(), token_id])
        return get(db, token_id)


def delete(db, token_id):
    with transaction(db):
        return db.execute("DELETE FROM api_tokens WHERE id = ?", [token_id]).rowcount > 0


def is_expired(row, today=None):
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    return bool(row["expires_at"]) and datetime.date.fromisoformat(row["expires_at"]) < today


def state(row):
    if row["revoked_at"]:
        return "revoked"
    if is_expired(row):
        return "expired"
    return "active"


def authenticate(db, header, source_ip):
    """The token row for an ``Authorization`` header value, or raise TokenError.

    Missing, malformed, unknown, revoked and expired tokens are 401; a valid
    token used from an address not on its list is 403.
    """
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if not header:
        raise TokenError(401, "unauthorized", "send the API token as `Authorization: Bearer <token>`")
    if scheme.lower() != "bearer" or not token:
        raise TokenError(401, "unauthorized", "the Authorization header must be `Bearer <token>`")
    digest = hash_token(token)
    row = next(db.query("SELECT * FROM api_tokens WHERE token_hash = ?", [digest]), None)
    # The lookup is by hash (an attacker cannot steer it); compare in constant time all the same.
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        raise TokenError(401, "invalid_token", "this API token is not valid")
    if row["revoked_at"]:
        raise TokenError(401, "token_revoked", f"this API token was revoked at {row['revoked_at']}")
    if is_expired(row):
        raise TokenError(401, "token_expired", f"this API token expired at the end of {row['expires_at']}")
    networks = allowed_networks(row)
    if networks:
        try:
            address = ipaddress.ip_address(source_ip or "")
        except ValueError:
            address = None
        if address is None or not any(address in network for network in networks):
            raise TokenError(403, "source_ip_not_allowed",
                             f"this API token may not be used from {source_ip or 'an unknown address'}")
    _touch(db, row)
    return row


def _touch(db, row):
    now = datetime.datetime.now(datetime.timezone.utc)
    last = row["last_used_at"]
    if last:
        last_time = datetime.datetime.strptime(last, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        if now - last_time < LAST_USED_RESOLUTION:
            return
    with transaction(db):
        db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", [now_iso(), row["id"]])


def can(row, role):
    return RANK.get(row["role"], 0) >= RANK[role]


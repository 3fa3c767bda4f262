"""Login throttling per source address and per account, read from the audit log.

Failed logins are audit entries anyway, so they are the throttle's memory:
it survives restarts and needs no table of its own.  Within ``WINDOW``:

- ``ACCOUNT_LIMIT`` failures for one username lock that username (whether
  or not it exists, so a lockout reveals nothing); a successful login
  starts its count afresh;
- ``IP_LIMIT`` failures from one address lock that address, whatever the
  usernames tried.

A lock lifts once enough failures have aged out of the window.  Attempts
made while locked are refused without checking the password and do not
count, so a lock never lasts longer than ``WINDOW``.
"""

import datetime

from . import audit

ACCOUNT_LIMIT = 5
IP_LIMIT = 20
WINDOW = datetime.timedelta(minutes=15)

ACTION = "auth.login"
WRONG = "wrong username, password or code"   # audit detail of a counted failure
LOCKED = "locked out"


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)


def _unlock_at(failures, limit):
    # failures are newest first; the lock lifts when the limit-th newest leaves the window.
    if len(failures) < limit:
        return None
    return _parse(failures[limit - 1]) + WINDOW


def locked_until(db, source_ip, username, now=None):
    """When the lock on this address or username lifts (UTC datetime), or None if not locked."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    since = _iso(now - WINDOW)
    by_ip = audit.failures_since(db, since, source_ip=source_ip, action=ACTION, detail_prefix=WRONG)
    last_ok = audit.last_success(db, username, ACTION)
    account_since = max(since, last_ok) if last_ok else since
    by_account = [at for at in audit.failures_since(db, account_since, actor=username, action=ACTION,
                                                    detail_prefix=WRONG) if not last_ok or at > last_ok]
    times = [t for t in (_unlock_at(by_ip, IP_LIMIT), _unlock_at(by_account, ACCOUNT_LIMIT)) if t and t > now]
    return max(times) if times else None


def minutes_left(until, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return max(1, -(-int((until - now).total_seconds()) // 60))


def failure(db, source_ip, username, step="password"):
    """Count one failed attempt (wrong user, password or code)."""
    audit.record(db, username, source_ip, ACTION, f"user={username}", "denied", f"{WRONG} ({step})")


def refused_while_locked(db, source_ip, username):
    audit.record(db, username, source_ip, ACTION, f"user={username}", "denied", LOCKED)


def success(db, source_ip, username, detail=""):
    audit.record(db, username, source_ip, ACTION, f"user={username}", "ok", detail)

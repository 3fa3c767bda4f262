"""TOTP two-factor login (RFC 6238, via pyotp) and single-use recovery codes.

The TOTP secret is kept in the database (it is needed to check codes, like
the WireGuard keys next to it); recovery codes are kept only as SHA-256
hashes.  They are 80 random bits each, so a fast hash is enough: there is
nothing to brute-force that a slow one would protect.
"""

import hashlib
import hmac
import json
import secrets
import threading
import time

import pyotp

from ..db import transaction
from . import users

ISSUER = "puqvpn"
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"   # no 0/o, 1/l/i: read off paper


def new_secret():
    return pyotp.random_base32()


def provisioning_uri(secret, username, issuer=ISSUER):
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


# Last time step accepted per secret: a code works once, even within its 30 s,
# and once a code is used no older one is taken.  Keyed by a hash of the
# secret, not the account id, which a restored or re-created account may reuse.
# The panel is one process, so memory is enough; a restart forgets at most one code.
_last_step = {}
_now = time.time
_last_step_lock = threading.Lock()


def check_code(secret, code, once=True, at=None):
    """True if the six-digit code is valid now (one step of clock drift either way).

    With ``once``, a code (or an older one) already accepted for this secret is refused.
    """
    code = "".join((code or "").split())
    if not (secret and len(code) == 6 and code.isdigit()):
        return False
    totp = pyotp.TOTP(secret)
    at = _now() if at is None else at
    step = int(at // totp.interval)
    for candidate in (step - 1, step, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            if not once:
                return True
            key = hashlib.sha256(secret.encode()).hexdigest()
            with _last_step_lock:
                if _last_step.get(key, -1) >= candidate:
                    return False
                _last_step[key] = candidate
            return True
    return False


def _normalise(code):
    return "".join(ch for ch in (code or "").lower() if ch.isalnum())


def _hash(code):
    return hashlib.sha256(_normalise(code).encode()).hexdigest()


def new_recovery_codes(count=RECOVERY_CODES):
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i:i + 4] for i in range(0, 16, 4)))
    return codes


def enable(db, user_id, secret):
    """Turn 2FA on with a confirmed secret; returns the recovery codes (shown once)."""
    codes = new_recovery_codes()
    with transaction(db):
        db.execute("UPDATE users SET totp_secret = ?, recovery_codes = ? WHERE id = ?",
                   [secret, json.dumps([_hash(code) for code in codes]), user_id])
    return codes


def regenerate_recovery_codes(db, user_id):
    codes = new_recovery_codes()
    with transaction(db):
        db.execute("UPDATE users SET recovery_codes = ? WHERE id = ?",
                   [json.dumps([_hash(code) for code in codes]), user_id])
    return codes


def disable(db, user_id):
    with transaction(db):
        db.execute("UPDATE users SET totp_secret = NULL, recovery_codes = '[]' WHERE id = ?", [user_id])


def use_recovery_code(db, user_id, code):
    """True if the code is one of the account's unused recovery codes; it is used up."""
    if len(_normalise(code)) != 16:
        return False
    wanted = _hash(code)
    with transaction(db):   # one transaction: two requests cannot both spend the same code
        user = users.get(db, user_id)
        hashes = json.loads(user["recovery_codes"] or "[]") if user else []
        match = next((h for h in hashes if hmac.compare_digest(h, wanted)), None)
        if match is None:
            return False
        hashes.remove(match)
        db.execute("UPDATE users SET recovery_codes = ? WHERE id = ?", [json.dumps(hashes), user_id])
    return True


def recovery_codes_left(user):
    return len(json.loads(user["recovery_codes"] or "[]"))


def verify_second_factor(db, user, code):
    """A TOTP code or a recovery code; returns 'totp', 'recovery' or None."""
    if check_code(user["totp_secret"], code):
        return "totp"
    if use_recovery_code(db, user["id"], code):
        return "recovery"
    return None

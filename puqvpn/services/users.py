"""Panel accounts: admins, operators and viewers. Passwords are stored only as scrypt hashes."""

from werkzeug.security import check_password_hash, generate_password_hash

from ..db import transaction
from . import validation
from .util import generate_password, now_iso
from .validation import Checker, FieldError, ValidationError

ROLES = ("admin", "operator", "viewer")


def hash_password(password):
    return generate_password_hash(password, method="scrypt")


def get(db, key):
    column = "id" if isinstance(key, int) else "username"
    return next(db.query(f"SELECT * FROM users WHERE {column} = ?", [key]), None)


def list_all(db):
    return list(db.query("SELECT id, username, role, totp_secret IS NOT NULL AS has_2fa, created_at, "
                         "last_login_at FROM users ORDER BY username"))


def _panel_password(value):
    value = validation._text(value)
    if len(value) < 10:
        raise FieldError("use at least 10 characters")
    if len(value) > 200:
        raise FieldError("use at most 200 characters")
    return value


def create_user(db, username, password=None, role="admin"):
    """Create an account; returns (row, password) — the password is generated when not given."""
    check = Checker()
    username = check.field("username", validation.username, username)
    password = check.field("password", _panel_password, password or generate_password())
    if role not in ROLES:
        check.error("role", f"choose one of {', '.join(ROLES)}")
    if username and get(db, username):
        check.error("username", "this username is taken")
    check.done()
    with transaction(db):
        db.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                   [username, hash_password(password), role, now_iso()])
    return get(db, username), password


def verify(db, username, password):
    """The user row if the password is right, else None (same cost either way)."""
    user = get(db, username) if isinstance(username, str) else None
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    return user if check_password_hash(user["password_hash"], password or "") else None


def set_password(db, username, password=None):
    """Change a password and end every session of that account; returns the password."""
    user = get(db, username)
    if user is None:
        raise LookupError(f"no user {username}")
    try:
        password = _panel_password(password or generate_password())
    except FieldError as error:
        raise ValidationError({"password": str(error)}) from None
    with transaction(db):
        db.execute("UPDATE users SET password_hash = ?, session_version = session_version + 1 WHERE id = ?",
                   [hash_password(password), user["id"]])
    return password


def delete_user(db, user_id):
    with transaction(db):
        user = get(db, user_id)
        if user and user["role"] == "admin":
            admins = next(db.query("SELECT count(*) AS n FROM users WHERE role = 'admin'"))["n"]
            if admins <= 1:
                raise ValidationError({"role": "the last admin cannot be removed"})
        db.execute("DELETE FROM users WHERE id = ?", [user_id])


_DUMMY_HASH = hash_password("not a real password")


def set_role(db, user_id, role):
    """Change an account's role; the last admin cannot be demoted. Takes effect on the next request."""
    if role not in ROLES:
        raise ValidationError({"role": f"choose one of {', '.join(ROLES)}"})
    with transaction(db):
        user = get(db, user_id)
        if user is None:
            raise LookupError(f"no user {user_id}")
        if user["role"] == "admin" and role != "admin":
            admins = next(db.query("SELECT count(*) AS n FROM users WHERE role = 'admin'"))["n"]
            if admins <= 1:
                raise ValidationError({"role": "the last admin cannot be demoted"})
        db.execute("UPDATE users SET role = ? WHERE id = ?", [role, user_id])


def reset_second_factor(db, user_id):
    """Turn off an account's 2FA (lost phone) and end its sessions."""
    with transaction(db):
        db.execute("UPDATE users SET totp_secret = NULL, recovery_codes = '[]', "
                   "session_version = session_version + 1 WHERE id = ?", [user_id])

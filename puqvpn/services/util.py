"""Small helpers shared by the services."""

import datetime
import secrets
import string


def now_iso():
    """UTC time as ISO 8601 with seconds: 2026-12-04T20:34:58Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def generate_password(length=20):
    """Letters and digits only, so it survives every config format and a phone keyboard."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))

"""Small helpers shared by the services."""

import datetime
import os
import secrets
import string
import tempfile
from pathlib import Path


def now_iso():
    """UTC time as ISO 8601 with seconds: 2026-12-04T20:34:58Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def generate_password(length=20):
    """Letters and digits only, so it survives every config format and a phone keyboard."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def write_atomic(path, data, mode=0o600, check=None, dir_mode=0o700):
    """Write a file so a reader sees the old one or the new one, never half of it.

    ``data`` is text, bytes, or a function that writes to a binary file.
    ``check(temp_path)`` may inspect the new file and raise to leave the old
    one in place (as unbound-checkconf does).  Returns False, writing
    nothing, when the file already holds exactly this text with this mode.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, bytes):
        try:
            if path.stat().st_mode & 0o777 == mode and path.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            data(handle) if callable(data) else handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(temp)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    # The rename itself must survive a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True

"""Backups: one .tar.gz with the database, the session key and a manifest.

The database is copied with SQLite's online backup API, so a backup taken
while the panel runs is consistent.  Keys and certificates live in the
database (interfaces, clients, certificates), so the copy holds them all.

A restore checks everything before it touches anything: the archive layout,
the manifest, every checksum, ``PRAGMA integrity_check``, the schema version
and that the tables are ours.  Only then does it copy the restored database
into the live one, again with the backup API: one write transaction, so other
connections (the running panel) see the old data or the new, never a mix.
"""

import hashlib
import io
import json
import os
import re
import sqlite3
import tarfile
import tempfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

from .. import migrations
from .util import write_atomic

FORMAT = "puqvpn-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DB_MEMBER = "puqvpn.sqlite3"
KEY_MEMBER = "secret_key"
TRAFFIC_TABLES = ("traffic_hourly", "traffic_daily")
# Tables a puqvpn database has had since schema 1: a file without them is not ours.
CORE_TABLES = {"users", "interfaces", "clients", "certificates", "options"}
MAX_MEMBER_BYTES = {MANIFEST: 1 << 20, KEY_MEMBER: 1 << 16, DB_MEMBER: 8 << 30}
SCHEDULED_NAME = re.compile(r"^puqvpn-\d{8}-\d{6}(-notraffic)?\.tar\.gz$")


class BackupError(Exception):
    """The file is not a usable puqvpn backup; the message says why."""


def app_version():
    try:
        from importlib.metadata import version
        return version("puqvpn")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _utcnow():
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------- create

def snapshot_database(db, dest, with_traffic=True):
    """Copy the live database to ``dest`` (a new file) with the backup API.

    The copy is switched out of WAL mode so it is one self-contained file.
    Without traffic, the hourly and daily buckets are dropped from the copy
    (the lifetime totals on each client stay) and the file is vacuumed small.
    """
    target = sqlite3.connect(str(dest), isolation_level=None)
    try:
        db.conn.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
        if not with_traffic:
            for table in TRAFFIC_TABLES:
                target.execute(f"DELETE FROM {table}")
            target.execute("VACUUM")
        return migrations.current_version(target)
    finally:
        target.close()


def create_backup(db, settings, dest, with_traffic=True):
    """Write a backup archive to ``dest`` (path or binary file object). Returns the manifest."""
    with tempfile.TemporaryDirectory(prefix="puqvpn-backup-") as work:
        work = Path(work)
        db_copy = work / DB_MEMBER
        schema = snapshot_database(db, db_copy, with_traffic=with_traffic)
        files = {DB_MEMBER: db_copy}
        key_file = Path(settings["SECRET_KEY_FILE"])
        if key_file.is_file():
            files[KEY_MEMBER] = key_file
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "app_version": app_version(),
            "schema_version": schema,
            "created_at": _utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "with_traffic": bool(with_traffic),
            "files": {
                name: {"sha256": _sha256(path), "size": path.stat().st_size}
                for name, path in files.items()
            },
        }
        payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if isinstance(dest, (str, os.PathLike)):
            write_atomic(Path(dest), lambda f: _write_tar(f, payload, files))
        else:
            _write_tar(dest, payload, files)
        return manifest


def _write_tar(fileobj, manifest_bytes, files):
    with tarfile.open(fileobj=fileobj, mode="w:gz", compresslevel=6) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(manifest_bytes), 0o600, int(time.time())
        tar.addfile(info, io.BytesIO(manifest_bytes))
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o600
            with open(path, "rb") as f:
                tar.addfile(info, f)


# ------------------------------------------------------------------- validate

def _open_tar(source):
    try:
        if isinstance(source, (str, os.PathLike)):
            return tarfile.open(str(source), mode="r:*")
        return tarfile.open(fileobj=source, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackupError(f"not a puqvpn backup: the file is not a readable .tar.gz archive ({e})") from None


def _extract(source, work):
    """Unpack the expected members into ``work``, refusing anything else. Returns the manifest."""
    tar = _open_tar(source)
    seen = set()
    try:
        for member in tar:
            name = member.name
            if name not in MAX_MEMBER_BYTES:
                raise BackupError(f"not a puqvpn backup: unexpected entry {name!r} in the archive")
            if not member.isfile():
                raise BackupError(f"not a puqvpn backup: {name!r} is not a regular file")
            if name in seen:
                raise BackupError(f"not a puqvpn backup: {name!r} appears twice")
            if member.size > MAX_MEMBER_BYTES[name]:
                raise BackupError(f"{name!r} is too large ({member.size} bytes)")
            seen.add(name)
            with tar.extractfile(member) as src, open(work / name, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BackupError(f"the backup archive is damaged ({e})") from None
    finally:
        tar.close()
    if MANIFEST not in seen:
        raise BackupError("not a puqvpn backup: the archive has no manifest.json")
    try:
        manifest = json.loads((work / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BackupError(f"not a puqvpn backup: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("not a puqvpn backup: the manifest does not name the puqvpn backup format")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"backup format version {manifest.get('format_version')!r} is not supported "
                          f"(this version reads {FORMAT_VERSION})")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or DB_MEMBER not in listed:
        raise BackupError("the manifest does not list the database")
    for name, meta in listed.items():
        if name not in MAX_MEMBER_BYTES or name == MANIFEST:
            raise BackupError(f"the manifest lists an unexpected file {name!r}")
        if name not in seen:
            raise BackupError(f"{name} is listed in the manifest but missing from the archive")
        if not isinstance(meta, dict) or _sha256(work / name) != meta.get("sha256"):
            raise BackupError(f"{name} does not match its checksum: the backup is damaged")
    extra = seen - set(listed) - {MANIFEST}
    if extra:
        raise BackupError(f"{', '.join(sorted(extra))} in the archive but not in the manifest")
    return manifest


def _check_database(path, manifest):
    """Integrity, schema version and table checks on the unpacked copy. Returns its version."""
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise BackupError("the database in the backup is not an SQLite file")
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                raise BackupError("the database in the backup is corrupt: " + "; ".join(result[:3]))
            version = migrations.current_version(conn)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            problems = list(conn.execute("PRAGMA foreign_key_check"))
        except sqlite3.DatabaseError as e:
            raise BackupError(f"the database in the backup is corrupt ({e})") from None
    finally:
        conn.close()
    missing = CORE_TABLES - tables
    if version < 1 or missing:
        raise BackupError("not a puqvpn backup: the database lacks the panel's tables"
                          + (f" ({', '.join(sorted(missing))})" if missing else ""))
    if version > migrations.latest_version():
        raise BackupError(f"the backup was made by a newer puqvpn (schema {version}; this version "
                          f"knows up to {migrations.latest_version()}): upgrade first, then restore")
    if version != manifest.get("schema_version"):
        raise BackupError("the manifest and the database disagree on the schema version")
    if problems:
        raise BackupError(f"the database in the backup has {len(problems)} broken references")
    return version


def inspect(source, work):
    """Validate ``source`` fully, unpacking into the folder ``work``. Returns the manifest.

    Raises BackupError with a message fit for the admin; nothing outside
    ``work`` is touched.
    """
    work = Path(work)
    manifest = _extract(source, work)
    _check_database(work / DB_MEMBER, manifest)
    if KEY_MEMBER in manifest["files"]:
        if not (work / KEY_MEMBER).read_bytes().strip():
            raise BackupError("the session key in the backup is empty")
    return manifest


def validate(source):
    """Check a backup without restoring it. Returns its manifest or raises BackupError."""
    with tempfile.TemporaryDirectory(prefix="puqvpn-restore-") as work:
        return inspect(source, work)


# -------------------------------------------------------------------- restore

def restore(db, settings, source, runner=None, reconcile=True, safety_copy=True):
    """Replace the current data with the backup in ``source`` (path or binary file object).

    Validation comes first and a refused file leaves everything as it was.
    An older schema is migrated on the unpacked copy before it goes live.
    By default the current data is saved to BACKUP_DIR as pre-restore-*.tar.gz,
    then the system is reconciled with the restored database.

    Returns a dict: manifest, migrated (versions applied), safety_copy (path
    or None), apply_error (None, or the message if the reconcile failed: the
    restored data is kept and the interfaces marked pending, as for any apply).
    """
    with tempfile.TemporaryDirectory(prefix="puqvpn-restore-") as work:
        work = Path(work)
        manifest = inspect(source, work)
        staged = sqlite3.connect(str(work / DB_MEMBER), isolation_level=None)
        try:
            try:
                applied = migrations.migrate(staged)
            except Exception as e:
                raise BackupError(f"the backup's database could not be upgraded ({e})") from None
            _match_page_size(staged, db.conn)

            saved = None
            if safety_copy:
                stamp = _utcnow().strftime("%Y%m%d-%H%M%S")
                saved = Path(settings["BACKUP_DIR"]) / f"pre-restore-{stamp}.tar.gz"
                create_backup(db, settings, saved, with_traffic=True)

            # One step, one write transaction on the live database.
            staged.backup(db.conn)
            if KEY_MEMBER in manifest["files"]:
                key_file = Path(settings["SECRET_KEY_FILE"])
                data = (work / KEY_MEMBER).read_bytes()
                write_atomic(key_file, data)
                os.chmod(key_file, 0o600)
        finally:
            staged.close()

    result = {"manifest": manifest, "migrated": applied, "safety_copy": str(saved) if saved else None,
              "apply_error": None}
    if reconcile:
        result["apply_error"] = reconcile_system(db, settings, runner)
    return result


def _match_page_size(staged, live):
    """The backup API cannot copy into a WAL database of another page size: convert the copy."""
    want = live.execute("PRAGMA page_size").fetchone()[0]
    if staged.execute("PRAGMA page_size").fetchone()[0] != want:
        staged.execute(f"PRAGMA page_size = {int(want)}")
        staged.execute("VACUUM")


def reconcile_system(db, settings, runner=None):
    """Bring the live system in line with the (restored) database. Returns an error message or None."""
    from . import apply
    from .system import CommandError, Context

    try:
        apply.reconcile(Context(db, settings, runner))
    except (CommandError, OSError) as e:
        return str(e)
    return None


# ------------------------------------------------------------------ scheduled

def list_backups(settings):
    """Backups in BACKUP_DIR, newest first: dicts with name, path, size, created (unix time),
    created_at (text) and scheduled (rotated by prune)."""
    folder = Path(settings["BACKUP_DIR"])
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.is_file() and path.name.endswith(".tar.gz") and not path.name.startswith("."):
            stat = path.stat()
            found.append({"name": path.name, "path": str(path), "size": stat.st_size, "created": stat.st_mtime,
                          "created_at": datetime.fromtimestamp(stat.st_mtime, timezone.utc)
                          .strftime("%Y-%m-%d %H:%M UTC"),
                          "scheduled": bool(SCHEDULED_NAME.match(path.name))})
    found.sort(key=lambda b: (b["created"], b["name"]), reverse=True)
    return found


def backup_path(settings, name):
    """The path of the backup ``name`` in BACKUP_DIR, or None if it is not one of them."""
    for entry in list_backups(settings):
        if entry["name"] == name:
            return Path(entry["path"])
    return None


def scheduled_backup(db, settings, with_traffic=True, now=None):
    """Write a timestamped backup into BACKUP_DIR and keep only the newest BACKUP_KEEP.

    Only files named like scheduled backups are pruned; manual copies and
    pre-restore copies in the folder are left alone.  Returns the new path.
    """
    now = now or _utcnow()
    folder = Path(settings["BACKUP_DIR"])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    suffix = "" if with_traffic else "-notraffic"
    path = folder / f"puqvpn-{now.strftime('%Y%m%d-%H%M%S')}{suffix}.tar.gz"
    create_backup(db, settings, path, with_traffic=with_traffic)
    os.chmod(path, 0o600)
    prune(settings)
    return path


def prune(settings):
    """Delete scheduled backups beyond the newest BACKUP_KEEP. Returns the names removed."""
    keep = max(int(settings["BACKUP_KEEP"]), 1)
    scheduled = [b for b in list_backups(settings) if b["scheduled"]]
    # Names sort by timestamp, which survives copying that resets mtimes.
    scheduled.sort(key=lambda b: b["name"][len("puqvpn-"):len("puqvpn-") + 15], reverse=True)
    removed = []
    for entry in scheduled[keep:]:
        Path(entry["path"]).unlink(missing_ok=True)
        removed.append(entry["name"])
    return removed


def run_if_due(db, settings, now=None):
    """For the background scheduler: make a scheduled backup when the newest is older
    than BACKUP_INTERVAL_HOURS (0 turns them off). Returns the new path or None."""
    hours = float(settings["BACKUP_INTERVAL_HOURS"])
    if hours <= 0:
        return None
    now = now or _utcnow()
    scheduled = [b for b in list_backups(settings) if b["scheduled"]]
    if scheduled:
        newest = max(scheduled, key=lambda b: b["name"])["name"]
        stamp = datetime.strptime(newest[len("puqvpn-"):len("puqvpn-") + 15], "%Y%m%d-%H%M%S")
        if (now - stamp.replace(tzinfo=timezone.utc)).total_seconds() < hours * 3600:
            return None
    return scheduled_backup(db, settings, now=now)

"""Backups: what goes in, what comes back, and what is refused without touching anything."""

import io
import json
import os
import sqlite3
import tarfile
from datetime import datetime, timedelta, timezone

import pytest

from puqvpn import migrations, settings as settings_module
from puqvpn.db import connect, transaction
from puqvpn.services import backup, clients, interfaces, users
from puqvpn.services.backup import BackupError

# Every table whose rows a restore must bring back exactly.
TABLES = ("users", "interfaces", "clients", "port_forwards", "counters", "traffic_hourly", "traffic_daily",
          "certificates", "options", "api_tokens", "share_links", "audit_log")


@pytest.fixture
def settings(tmp_path):
    return settings_module.load(config_file=str(tmp_path / "none.conf"), environ={},
                                INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0")


@pytest.fixture
def db(settings):
    db = connect(settings["DATABASE"])
    (settings.path("SECRET_KEY_FILE")).write_text("a" * 64)
    yield db
    db.conn.close()


def populate(db, clients_count=5, hours=48):
    """An interface with clients, keys, certificates and traffic history, as a used panel has."""
    users.create_user(db, "admin", "correct-horse-battery")
    wg0 = interfaces.create(db, {"address": "10.8.0.1/24", "address6": "fd42:8::1/64", "listen_port": "51820",
                                 "endpoint": "vpn.example.com"})
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with transaction(db):
        db["certificates"].insert_all([
            {"kind": "ca", "cert_pem": "-----BEGIN CERTIFICATE-----\nCA\n", "key_pem": "ca-key",
             "created_at": "2026-11-01T00:00:00Z"},
            {"kind": "server", "cert_pem": "-----BEGIN CERTIFICATE-----\nSRV\n", "key_pem": "srv-key",
             "created_at": "2026-11-01T00:00:00Z"}])
        db["options"].insert({"key": "ikev2.proposals", "value": json.dumps(["aes256-sha256-modp2048"])})
    for n in range(clients_count):
        client = clients.create(db, {"interface_id": wg0["id"], "name": f"client{n}", "down_mbit": str(n)})
        with transaction(db):
            db.execute("UPDATE clients SET rx_bytes = ?, tx_bytes = ? WHERE id = ?",
                       [n * 1_000_003, n * 7_000_001, client["id"]])
            db["traffic_hourly"].insert_all(
                {"client_id": client["id"], "hour": (start + timedelta(hours=h)).strftime("%Y-%m-%dT%H"),
                 "rx": h * 1000 + n, "tx": h * 3000 + n} for h in range(hours))
            db["traffic_daily"].insert_all(
                {"client_id": client["id"], "day": (start + timedelta(days=d)).strftime("%Y-%m-%d"),
                 "rx": d * 24000, "tx": d * 72000} for d in range(hours // 24))
    return wg0


def dump(db):
    return {table: [dict(row) for row in db.query(f"SELECT * FROM {table} ORDER BY rowid")] for table in TABLES}


def test_round_trip_brings_back_every_client_key_certificate_and_traffic_total(db, settings, tmp_path):
    populate(db)
    before = dump(db)
    path = tmp_path / "full.tar.gz"
    manifest = backup.create_backup(db, settings, path)
    assert manifest["schema_version"] == migrations.latest_version()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # private keys inside

    # Everything changes after the backup: keys, clients, history, the session key.
    with transaction(db):
        db.execute("UPDATE interfaces SET private_key = 'x', public_key = 'y'")
        db.execute("DELETE FROM clients WHERE name = 'client3'")
        db.execute("UPDATE clients SET rx_bytes = rx_bytes + 5")
        db.execute("DELETE FROM certificates")
    settings.path("SECRET_KEY_FILE").write_text("b" * 64)
    clients.create(db, {"interface_id": 1, "name": "latecomer"})

    result = backup.restore(db, settings, path, reconcile=False)
    assert dump(db) == before
    assert settings.path("SECRET_KEY_FILE").read_text() == "a" * 64
    assert result["migrated"] == []
    # The data as it was before the restore is kept, and is itself a valid backup.
    saved = backup_contents(result["safety_copy"], tmp_path / "saved")
    assert "latecomer" in [c["name"] for c in saved["clients"]]


def backup_contents(path, work):
    """The tables inside a backup file, after the same checks a restore makes."""
    work.mkdir()
    backup.inspect(path, work)
    conn = sqlite3.connect(work / "puqvpn.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in TABLES}
    finally:
        conn.close()


def test_a_connection_open_during_the_restore_sees_the_restored_data(db, settings, tmp_path):
    populate(db, clients_count=2)
    path = tmp_path / "b.tar.gz"
    backup.create_backup(db, settings, path)
    panel = connect(settings["DATABASE"])  # as the running web app holds one
    clients.create(panel, {"interface_id": 1, "name": "after-backup"})
    backup.restore(db, settings, path, reconcile=False)
    assert [r["name"] for r in panel.query("SELECT name FROM clients ORDER BY id")] == ["client0", "client1"]
    assert panel.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    panel.conn.close()


def test_without_traffic_drops_the_history_but_keeps_each_clients_totals(db, settings, tmp_path):
    populate(db, clients_count=50, hours=24 * 31)
    full, lean = tmp_path / "full.tar.gz", tmp_path / "lean.tar.gz"
    backup.create_backup(db, settings, full)
    manifest = backup.create_backup(db, settings, lean, with_traffic=False)
    assert manifest["with_traffic"] is False
    assert lean.stat().st_size < full.stat().st_size / 3
    before = dump(db)

    backup.restore(db, settings, lean, reconcile=False)
    after = dump(db)
    assert after["traffic_hourly"] == after["traffic_daily"] == []
    assert after["clients"] == before["clients"]  # rx_bytes / tx_bytes totals included


def corrupt(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def pack(members):
    """A .tar.gz made of {name: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def repack(path, change):
    """Unpack a real backup, let ``change`` edit {name: bytes}, pack it again."""
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    change(members)
    path.write_bytes(pack(members))


def with_manifest(members, **fields):
    manifest = json.loads(members["manifest.json"])
    manifest.update(fields)
    members["manifest.json"] = json.dumps(manifest).encode()


def resign(members):
    import hashlib
    manifest = json.loads(members["manifest.json"])
    for name in manifest["files"]:
        manifest["files"][name]["sha256"] = hashlib.sha256(members[name]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()


def foreign_database(members, tmp_path):
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    members["puqvpn.sqlite3"] = other.read_bytes()
    resign(members)


def newer_schema(members, tmp_path):
    copy = tmp_path / "newer.sqlite3"
    copy.write_bytes(members["puqvpn.sqlite3"])
    conn = sqlite3.connect(copy)
    conn.execute(f"PRAGMA user_version = {migrations.latest_version() + 1}")
    conn.commit()
    conn.close()
    members["puqvpn.sqlite3"] = copy.read_bytes()
    with_manifest(members, schema_version=migrations.latest_version() + 1)
    resign(members)


def damaged_pages(members, tmp_path):
    copy = tmp_path / "damaged.sqlite3"
    copy.write_bytes(members["puqvpn.sqlite3"])
    conn = sqlite3.connect(copy)
    root, = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'clients'").fetchone()
    page_size, = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray(copy.read_bytes())
    # The clients table's b-tree page loses its header: a disk error, say.
    start = (root - 1) * page_size
    data[start:start + 12] = b"\xff" * 12
    members["puqvpn.sqlite3"] = bytes(data)
    resign(members)


BAD_FILES = {
    "flipped bytes": (lambda p, t: corrupt(p), "damaged|not a readable"),
    "truncated": (lambda p, t: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "damaged|not a readable"),
    "not an archive": (lambda p, t: p.write_bytes(b"PK\x03\x04 just a zip header"), "not a readable"),
    "someone else's archive": (lambda p, t: p.write_bytes(pack({"etc/passwd": b"root:x:0:0"})), "unexpected entry"),
    "path traversal": (lambda p, t: p.write_bytes(pack({"../puqvpn.sqlite3": b"x"})), "unexpected entry"),
    "no manifest": (lambda p, t: repack(p, lambda m: m.pop("manifest.json")), "no manifest"),
    "another format": (lambda p, t: repack(p, lambda m: with_manifest(m, format="wg-easy")), "format"),
    "checksum mismatch": (lambda p, t: repack(p, lambda m: m.update({"secret_key": b"c" * 64})), "checksum"),
    "another program's database": (lambda p, t: repack(p, lambda m: foreign_database(m, t)), "panel's tables"),
    "from a newer version": (lambda p, t: repack(p, lambda m: newer_schema(m, t)), "newer puqvpn"),
    "corrupt pages": (lambda p, t: repack(p, lambda m: damaged_pages(m, t)), "corrupt"),
}


@pytest.mark.parametrize("spoil", BAD_FILES, ids=list(BAD_FILES))
def test_a_corrupt_or_foreign_file_is_refused_and_nothing_changes(db, settings, tmp_path, spoil):
    populate(db, clients_count=3, hours=2)
    path = tmp_path / "b.tar.gz"
    backup.create_backup(db, settings, path)
    make_bad, message = BAD_FILES[spoil]
    make_bad(path, tmp_path)
    with transaction(db):
        db.execute("UPDATE clients SET note = 'after the backup'")
    before, key_before = dump(db), settings.path("SECRET_KEY_FILE").read_bytes()

    with pytest.raises(BackupError, match=message):
        backup.restore(db, settings, path, reconcile=False)
    assert dump(db) == before
    assert settings.path("SECRET_KEY_FILE").read_bytes() == key_before
    assert not settings.path("BACKUP_DIR").exists()  # not even a safety copy was needed


def test_an_older_backup_is_migrated_on_restore(db, settings, tmp_path, monkeypatch):
    populate(db, clients_count=2, hours=1)
    path = tmp_path / "old.tar.gz"
    backup.create_backup(db, settings, path)
    before = dump(db)

    # A later release adds a column; the running panel is already migrated.
    def add_column(conn):
        conn.execute("ALTER TABLE clients ADD COLUMN color TEXT NOT NULL DEFAULT 'blue'")
    version = migrations.latest_version() + 1
    monkeypatch.setitem(migrations.MIGRATIONS, version, add_column)
    migrations.migrate(db.conn)

    result = backup.restore(db, settings, path, reconcile=False)
    assert result["migrated"] == [version]
    assert migrations.current_version(db.conn) == version
    restored = dump(db)["clients"]
    assert [{k: v for k, v in c.items() if k != "color"} for c in restored] == before["clients"]
    assert {c["color"] for c in restored} == {"blue"}


def test_scheduled_backups_keep_the_newest_and_leave_other_files_alone(db, settings):
    populate(db, clients_count=1, hours=1)
    settings["BACKUP_KEEP"] = "3"
    start = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    made = [backup.scheduled_backup(db, settings, now=start + timedelta(days=d)) for d in range(5)]
    manual = settings.path("BACKUP_DIR") / "before-upgrade.tar.gz"
    manual.write_bytes(made[0].read_bytes() if made[0].exists() else made[-1].read_bytes())

    names = sorted(b["name"] for b in backup.list_backups(settings) if b["scheduled"])
    assert names == [p.name for p in made[2:]]
    assert manual.exists()
    assert oct(settings.path("BACKUP_DIR").stat().st_mode & 0o777) == "0o700"
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in made[2:])
    assert backup.validate(made[-1])["with_traffic"] is True


def test_run_if_due_follows_the_interval(db, settings):
    populate(db, clients_count=1, hours=1)
    settings["BACKUP_INTERVAL_HOURS"] = "24"
    t0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    assert backup.run_if_due(db, settings, now=t0) is not None       # none yet
    assert backup.run_if_due(db, settings, now=t0 + timedelta(hours=23)) is None
    assert backup.run_if_due(db, settings, now=t0 + timedelta(hours=24)) is not None
    settings["BACKUP_INTERVAL_HOURS"] = "0"
    assert backup.run_if_due(db, settings, now=t0 + timedelta(days=9)) is None
    assert len(backup.list_backups(settings)) == 2


def test_restore_reconciles_the_live_system_with_the_restored_data(db, settings, tmp_path, monkeypatch):
    from puqvpn.services import apply
    populate(db, clients_count=2, hours=1)
    path = tmp_path / "b.tar.gz"
    backup.create_backup(db, settings, path)
    clients.delete(db, clients.get(db, "client1")["id"])

    seen = []
    monkeypatch.setattr(apply, "reconcile", lambda ctx: seen.append(
        [c["name"] for c in ctx.db.query("SELECT name FROM clients ORDER BY id")]))
    result = backup.restore(db, settings, path)
    assert seen == [["client0", "client1"]]  # once, on the restored rows
    assert result["apply_error"] is None


def test_a_failed_reconcile_keeps_the_restored_data_and_says_why(db, settings, tmp_path, monkeypatch):
    from puqvpn.services import apply
    populate(db, clients_count=2, hours=1)
    path = tmp_path / "b.tar.gz"
    backup.create_backup(db, settings, path)
    before = dump(db)
    clients.delete(db, clients.get(db, "client1")["id"])

    def charon_down(ctx):
        raise apply.ApplyError([("strongswan", "wg0", "charon is not running")])
    monkeypatch.setattr(apply, "reconcile", charon_down)
    result = backup.restore(db, settings, path)
    assert result["apply_error"] == "wg0: strongswan: charon is not running"
    assert dump(db)["clients"] == before["clients"]

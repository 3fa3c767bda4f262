import sqlite3

from puqvpn import migrations
from puqvpn.db import connect


def test_a_new_database_is_at_the_latest_version(db):
    assert migrations.current_version(db.conn) == migrations.latest_version()
    assert {"users", "interfaces", "clients", "traffic_daily", "audit_log"} <= set(db.table_names())


def test_wal_and_foreign_keys_are_on(db):
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_upgrading_an_old_database_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn, target=1)
    conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('old-admin', 'x', 'then')")
    conn.close()

    migrations.MIGRATIONS[999] = lambda c: c.execute("ALTER TABLE users ADD COLUMN shoe_size INTEGER")
    try:
        db = connect(path)
        assert migrations.current_version(db.conn) == 999
        row = next(db.query("SELECT username, shoe_size FROM users"))
        assert row == {"username": "old-admin", "shoe_size": None}
    finally:
        del migrations.MIGRATIONS[999]


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "db.sqlite3"
    connect(path).conn.close()

    def broken(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    migrations.MIGRATIONS[998] = broken
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            migrations.migrate(conn)
        except RuntimeError:
            pass
        assert migrations.current_version(conn) == max(v for v in migrations.MIGRATIONS if v != 998)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    finally:
        del migrations.MIGRATIONS[998]

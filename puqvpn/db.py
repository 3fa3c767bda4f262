"""The database connection: one per request in the web app, one per job elsewhere.

``connect()`` is plain Python so the service layer, the CLI and benchmarks use
it without Flask; ``get_db()`` is the per-request handle.
"""

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import click
import sqlite_utils
from flask import current_app, g

from . import migrations


def connect(path, migrate=True):
    """Open the database in WAL mode with foreign keys on, migrated to the latest schema.

    The connection is in autocommit mode: write through ``transaction()``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = not path.exists()
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    if fresh:
        os.chmod(path, 0o600)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")
    if migrate:
        migrations.migrate(conn)
    return sqlite_utils.Database(conn)


@contextmanager
def transaction(db):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    IMMEDIATE takes the write lock up front, so two writers queue on the
    busy timeout instead of failing half-way.  Nested use joins the outer one.
    """
    conn = db.conn
    if conn.in_transaction:
        yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def get_db():
    if "db" not in g:
        g.db = connect(current_app.config["PUQVPN"]["DATABASE"], migrate=False)
    return g.db


def close_db(_exception=None):
    db = g.pop("db", None)
    if db is not None:
        db.conn.close()


@click.command("init-db")
def init_db_command():
    """Create the database or upgrade it to the latest schema."""
    db = connect(current_app.config["PUQVPN"]["DATABASE"], migrate=False)
    applied = migrations.migrate(db.conn)
    click.echo(f"Database at schema version {migrations.current_version(db.conn)}"
               + (f" (applied {', '.join(map(str, applied))})." if applied else " (up to date)."))


def init_app(app):
    app.teardown_appcontext(close_db)
    app.cli.add_command(init_db_command)

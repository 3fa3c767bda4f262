"""Backup size and time, with and without traffic history, and a full restore.

    /opt/pqv-venv/bin/python bench/bench_backup.py [--clients 1000] [--days 31]

Seeds a temporary database with N clients (bench/seed.py) and their traffic
history as the accounting poller keeps it: one hourly bucket per client per
hour for HOURLY_RETENTION_DAYS, one daily bucket per day before that.  Then
makes both kinds of backup and restores the full one, printing sizes and
times.  Nothing outside the temporary folder is touched (SYSTEM_APPLY=0).
"""

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed import seed  # noqa: E402
from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.db import connect, transaction  # noqa: E402
from puqvpn.services import backup  # noqa: E402


def add_history(db, days, daily_days=334):
    """Hourly buckets for the last ``days`` days, daily ones for the year before."""
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    client_ids = [row["id"] for row in db.query("SELECT id FROM clients")]
    hours = [(start - timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(days * 24)]
    past = [(start - timedelta(days=days + d)).strftime("%Y-%m-%d") for d in range(daily_days)]
    with transaction(db):
        for cid in client_ids:
            db.conn.executemany("INSERT INTO traffic_hourly (client_id, hour, rx, tx) VALUES (?, ?, ?, ?)",
                                [(cid, hour, (cid * 7919 + n * 104729) % 50_000_000,
                                  (cid * 104729 + n * 7919) % 400_000_000) for n, hour in enumerate(hours)])
            db.conn.executemany("INSERT INTO traffic_daily (client_id, day, rx, tx) VALUES (?, ?, ?, ?)",
                                [(cid, day, (cid + n) * 1_000_003 % 10**9, (cid + n) * 7_000_001 % 10**10)
                                 for n, day in enumerate(past)])
    return len(client_ids) * len(hours), len(client_ids) * len(past)


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=31, help="days of hourly buckets")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pqv-bench-backup-") as work:
        work = Path(work)
        settings = settings_module.load(config_file=str(work / "none.conf"), environ={},
                                        INSTANCE_DIR=str(work / "data"), SYSTEM_APPLY="0")
        db = connect(settings["DATABASE"])
        settings.path("SECRET_KEY_FILE").write_text("0" * 64)
        seed(db, count=args.clients)
        hourly, daily = add_history(db, args.days)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        database_size = settings.path("DATABASE").stat().st_size

        full, lean = work / "full.tar.gz", work / "lean.tar.gz"
        _, full_seconds = timed(backup.create_backup, db, settings, full)
        _, lean_seconds = timed(backup.create_backup, db, settings, lean, with_traffic=False)
        _, restore_seconds = timed(backup.restore, db, settings, full, reconcile=False, safety_copy=False)
        full_size, lean_size = full.stat().st_size, lean.stat().st_size
        db.conn.close()

    print(f"{args.clients} clients, {hourly} hourly and {daily} daily traffic buckets; "
          f"database {database_size / 1e6:.1f} MB")
    print(f"backup with traffic history:    {full_size / 1e6:7.2f} MB in {full_seconds:.2f} s")
    print(f"backup without traffic history: {lean_size / 1e6:7.2f} MB in {lean_seconds:.2f} s "
          f"({full_size / lean_size:.0f}x smaller)")
    print(f"restore of the full backup (validation included): {restore_seconds:.2f} s")


if __name__ == "__main__":
    main()

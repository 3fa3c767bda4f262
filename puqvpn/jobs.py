"""Background jobs in the panel's process: the traffic poller, quota and expiry
checks, retries of pending changes, and scheduled backups.

Each job runs in its own daemon thread with its own database connection, so
a slow or failing job never blocks requests or the other jobs.  A job's last
run, duration and error are kept here and shown on the dashboard.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import import_module

from .db import connect
from .services.system import Context

log = logging.getLogger("puqvpn.jobs")


@dataclass
class Job:
    name: str
    module: str          # puqvpn.services.<module>
    function: str        # called as function(ctx)
    interval: float      # seconds
    runs: int = 0
    failures: int = 0
    last_run: float = 0.0
    last_duration: float = 0.0
    last_error: str = ""
    thread: threading.Thread = field(default=None, repr=False)

    def target(self):
        try:
            module = import_module(f"puqvpn.services.{self.module}")
        except ModuleNotFoundError:
            return None
        return getattr(module, self.function, None)


def _backup_if_due(ctx):
    from .services import backup
    return backup.run_if_due(ctx.db, ctx.settings)


def plan(settings):
    """The jobs this panel runs, with their intervals from the settings."""
    poll = max(5, settings.int("POLL_INTERVAL"))
    jobs = [
        Job("traffic and status poll", "accounting", "poll", poll),
        Job("quota and expiry check", "accounting", "check_limits", 60),
        Job("retry pending changes", "apply", "retry_pending", 30),
        # charon recreates ipsec0 (losing its tc classes) whenever it restarts.
        Job("IKEv2 limits after a charon restart", "shaping", "heal_ipsec_device", 30),
        # Catches rules or peers changed behind the panel's back; a no-op when in sync.
        Job("periodic reconcile", "apply", "reconcile", 900),
        Job("traffic roll-up", "accounting", "rollup", 3600),
        Job("audit-log retention", "audit", "prune", 3600),
    ]
    if settings.int("BACKUP_INTERVAL_HOURS") > 0:
        jobs.append(Job("scheduled backup", "backup", "run_if_due", 600))
    return jobs


JOBS = []
_stop = threading.Event()


def run_once(job, settings, runner=None):
    """Run one job now; record the outcome instead of raising."""
    function = _backup_if_due if (job.module, job.function) == ("backup", "run_if_due") else job.target()
    if function is None:
        return None
    started = time.monotonic()
    db = connect(settings["DATABASE"], migrate=False)
    try:
        result = function(Context(db, settings, runner))
        job.last_error = ""
        return result
    except Exception as error:   # one job's failure must not stop the others
        job.failures += 1
        job.last_error = f"{type(error).__name__}: {error}"
        log.error("job %r failed: %s", job.name, job.last_error)
        return None
    finally:
        db.conn.close()
        job.runs += 1
        job.last_run = time.time()
        job.last_duration = time.monotonic() - started


def _loop(job, settings):
    # Stagger the first runs a little so start-up isn't one burst.
    if _stop.wait(min(job.interval, 5)):
        return
    while not _stop.is_set():
        run_once(job, settings)
        if _stop.wait(job.interval):
            return


def start(app):
    settings = app.config["PUQVPN"]
    _stop.clear()
    JOBS[:] = plan(settings)
    for job in JOBS:
        if job.target() is None and job.module != "backup":
            continue
        job.thread = threading.Thread(target=_loop, args=(job, settings), name=f"job:{job.name}", daemon=True)
        job.thread.start()
    return JOBS


def stop():
    _stop.set()
    for job in JOBS:
        if job.thread:
            job.thread.join(timeout=5)


def status_panel(_ctx):
    """Dashboard line: which jobs run and whether any failed last time."""
    if not JOBS:
        return {"state": "warn", "detail": "not running in this process (BACKGROUND_JOBS=0 or not started)"}
    failing = [job for job in JOBS if job.last_error]
    if failing:
        return {"state": "down", "detail": "; ".join(f"{job.name}: {job.last_error}" for job in failing)}
    ran = [job for job in JOBS if job.runs]
    return {"state": "ok", "detail": f"{len(ran)} of {len(JOBS)} jobs have run, none failing"}

"""Pushing database changes to the live system.

The database is the truth.  A route commits its change, then calls one of
the functions below; each loads the rows fresh and runs every backend module
that takes part (see ``BACKENDS`` and docs/architecture.md for the hooks).

Failure policy: keep and mark pending.  If a backend fails, the database
change stays, the interface's ``apply_error`` holds a message naming the
backend, the command and its error output, and ``ApplyError`` is raised for
the page to show.  The other backends still run, so WireGuard keeps working
while, say, charon is down.  ``reconcile`` (background job, Apply button,
``puqvpn apply``, start-up) makes the whole system match the database and
clears the marks once everything succeeded.  Failures that no interface row
can hold (an interface already deleted) are kept in the ``options`` row
``apply_error`` until a reconcile succeeds.
"""

import importlib
import json
import logging
import threading
from dataclasses import dataclass, field

from .system import CommandError

log = logging.getLogger(__name__)

# The backend modules of puqvpn.services, in the order they run: WireGuard
# creates the interface the others attach rules, classes and routes to.  A
# module that does not exist (yet) is skipped.
BACKENDS = ("wireguard", "firewall", "shaping", "strongswan", "resolver", "connlog")

# options row holding failures that belong to no interface row.
GLOBAL_ERROR_KEY = "apply_error"

# One apply at a time per process: a reconcile must not interleave with a
# client change and push a stale snapshot over it.
_lock = threading.RLock()


class BackendErrors(Exception):
    """Raised by a backend's reconcile when some interfaces failed and others did not.

    ``errors`` maps an interface name (or None for the whole system) to a
    message; ``changes`` lists what the backend did change.
    """

    def __init__(self, errors, changes=()):
        self.errors = dict(errors)
        self.changes = list(changes)
        super().__init__("; ".join(f"{name or 'system'}: {message}" for name, message in self.errors.items()))


class ApplyError(CommandError):
    """The database change is kept but could not (all) be applied; the message says what and why.

    A CommandError, so code that handles failed system commands handles this too.
    ``failures`` lists (backend, interface name or None, message); ``report``
    is the reconcile report when the error comes from a reconcile.
    """

    def __init__(self, failures, report=None):
        self.failures = list(failures)
        self.report = report
        self.argv, self.returncode, self.stderr = [], None, ""
        self.reason = describe_failures(self.failures)
        Exception.__init__(self, self.reason)

    def describe(self):
        return self.reason


@dataclass
class Report:
    """What an apply did: changes as (backend, text), failures as (backend, interface, message)."""

    changes: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    skipped: str = ""

    @property
    def changed(self):
        return bool(self.changes)

    @property
    def ok(self):
        return not self.failures

    def lines(self):
        if self.skipped:
            return [self.skipped]
        lines = [f"{backend}: {text}" if not text.startswith(f"{backend}:") else text
                 for backend, text in self.changes]
        lines += [f"FAILED {backend}" + (f" ({name})" if name else "") + f": {message}"
                  for backend, name, message in self.failures]
        return lines or ["nothing to change: the live system matches the database"]

    def __str__(self):
        return "\n".join(self.lines())


def describe_failures(failures):
    parts = []
    for backend, name, message in failures:
        parts.append((f"{name}: " if name else "") + f"{backend}: {message}")
    return "; ".join(parts) or "apply failed"


# ------------------------------------------------------------------ backends

def backends():
    """[(name, module)] of the backends present, plus failures for any that would not import."""
    found, broken = [], []
    for name in BACKENDS:
        module_name = f"{__package__}.{name}"
        try:
            found.append((name, importlib.import_module(module_name)))
        except ModuleNotFoundError as error:
            if error.name != module_name:
                broken.append((name, f"could not load: {error}"))
        except Exception as error:  # a broken backend must not stop the others
            log.exception("backend %s failed to import", name)
            broken.append((name, f"could not load: {error}"))
    return found, broken


def _message(error):
    if isinstance(error, (CommandError, ValueError, RuntimeError, OSError)):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"     # a bug: say what kind


def _run_hook(ctx, hook, *args):
    """Run one hook of every backend; returns (changes, failures as (backend, message))."""
    modules, failures = backends()
    changes = []
    for name, module in modules:
        function = getattr(module, hook, None)
        if function is None:
            continue
        try:
            result = function(ctx, *args)
        except CommandError as error:
            log.warning("%s.%s failed: %s", name, hook, error)
            failures.append((name, _message(error)))
            continue
        except Exception as error:
            log.exception("%s.%s failed", name, hook)
            failures.append((name, _message(error)))
            continue
        changes += [(name, str(text)) for text in _as_list(result)]
    return changes, failures


def _as_list(result):
    return list(result) if isinstance(result, (list, tuple)) else []


# ------------------------------------------------------------------ marks

def _row(ctx, table, key):
    return next(ctx.db.query(f"SELECT * FROM {table} WHERE id = ?", [key]), None)


def _set_interface_error(ctx, interface_id, message):
    ctx.db.execute("UPDATE interfaces SET apply_error = ? WHERE id = ? AND apply_error IS NOT ?",
                   [message, interface_id, message])


def global_error(ctx):
    row = next(ctx.db.query("SELECT value FROM options WHERE key = ?", [GLOBAL_ERROR_KEY]), None)
    return json.loads(row["value"]) if row else None


def _set_global_error(ctx, message):
    if message is None:
        ctx.db.execute("DELETE FROM options WHERE key = ?", [GLOBAL_ERROR_KEY])
    else:
        ctx.db.execute("INSERT INTO options (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       [GLOBAL_ERROR_KEY, json.dumps(message)])


def pending(ctx):
    """True if some change is marked as not (fully) applied."""
    row = next(ctx.db.query("SELECT count(*) AS n FROM interfaces WHERE apply_error IS NOT NULL"))
    return bool(row["n"]) or global_error(ctx) is not None


# ------------------------------------------------------------------ the entry points

def _skipped(ctx):
    return None if ctx.live else Report(skipped="SYSTEM_APPLY is 0: the live system is left alone")


def _finish_interface(ctx, interface, changes, failures, clear=False):
    report = Report(changes=changes, failures=[(b, interface["name"], m) for b, m in failures])
    if failures:
        _set_interface_error(ctx, interface["id"], describe_failures([(b, None, m) for b, m in failures]))
        raise ApplyError(report.failures, report)
    if clear:
        _set_interface_error(ctx, interface["id"], None)
    return report


def client_changed(ctx, client_id):
    """A client was created, edited, suspended or resumed: apply that client only."""
    skipped = _skipped(ctx)
    if skipped:
        return skipped
    with _lock:
        client = _row(ctx, "clients", client_id)
        if client is None:
            return Report()     # deleted since; client_removed covers it
        interface = _row(ctx, "interfaces", client["interface_id"])
        changes, failures = _run_hook(ctx, "client_changed", interface, client)
        return _finish_interface(ctx, interface, changes, failures)


def client_removed(ctx, client_row):
    """A client was deleted; ``client_row`` is the row as it was."""
    skipped = _skipped(ctx)
    if skipped:
        return skipped
    with _lock:
        interface = _row(ctx, "interfaces", client_row["interface_id"])
        if interface is None:
            return Report()     # the interface went with it; interface_removed covers it
        changes, failures = _run_hook(ctx, "client_removed", interface, dict(client_row))
        return _finish_interface(ctx, interface, changes, failures)


def interface_changed(ctx, interface_id):
    """An interface was created, edited, enabled or disabled: apply it with all its clients.

    Success clears the interface's pending mark: this is a full apply of it.
    """
    skipped = _skipped(ctx)
    if skipped:
        return skipped
    with _lock:
        interface = _row(ctx, "interfaces", interface_id)
        if interface is None:
            return Report()
        clients = list(ctx.db.query("SELECT * FROM clients WHERE interface_id = ? ORDER BY ip_int",
                                    [interface["id"]]))
        changes, failures = _run_hook(ctx, "interface_changed", interface, clients)
        return _finish_interface(ctx, interface, changes, failures, clear=True)


def interface_removed(ctx, interface_row):
    """An interface was deleted (its clients with it); ``interface_row`` is the row as it was."""
    skipped = _skipped(ctx)
    if skipped:
        return skipped
    with _lock:
        interface = dict(interface_row)
        changes, failures = _run_hook(ctx, "interface_removed", interface)
        report = Report(changes=changes, failures=[(b, interface["name"], m) for b, m in failures])
        if failures:
            _set_global_error(ctx, describe_failures(report.failures))
            raise ApplyError(report.failures, report)
        return report


def reconcile(ctx):
    """Make the whole live system match the database; idempotent.

    Returns a Report (``report.changed`` is False when nothing had to
    change).  Interfaces whose backends all succeeded lose their pending
    mark; failures mark the interfaces concerned and raise ApplyError with
    the report attached.
    """
    skipped = _skipped(ctx)
    if skipped:
        return skipped
    with _lock:
        interfaces = list(ctx.db.query("SELECT * FROM interfaces ORDER BY name"))
        by_id = {interface["id"]: [] for interface in interfaces}
        for client in ctx.db.query("SELECT * FROM clients ORDER BY interface_id, ip_int"):
            by_id[client["interface_id"]].append(client)
        pairs = [(interface, by_id[interface["id"]]) for interface in interfaces]

        report = Report()
        modules, broken = backends()
        report.failures += [(name, None, message) for name, message in broken]
        for name, module in modules:
            function = getattr(module, "reconcile", None)
            if function is None:
                continue
            try:
                result = function(ctx, pairs)
            except BackendErrors as error:
                report.changes += [(name, str(text)) for text in error.changes]
                report.failures += [(name, ifname, message) for ifname, message in error.errors.items()]
                continue
            except Exception as error:
                if not isinstance(error, CommandError):
                    log.exception("%s.reconcile failed", name)
                report.failures.append((name, None, _message(error)))
                continue
            report.changes += [(name, str(text)) for text in _as_list(result)]

        names = {interface["name"] for interface in interfaces}
        for interface in interfaces:
            mine = [(b, None, m) for b, n, m in report.failures if n == interface["name"] or n is None]
            _set_interface_error(ctx, interface["id"], describe_failures(mine) if mine else None)
        homeless = [f for f in report.failures if f[1] is None or f[1] not in names]
        _set_global_error(ctx, describe_failures(homeless) if homeless else None)
        if report.failures:
            raise ApplyError(report.failures, report)
        return report


def retry_pending(ctx):
    """For the background job: reconcile if anything is marked pending.

    Returns None when nothing was pending, else the reconcile Report (with
    its failures, if it failed again: the marks then stay).
    """
    if not ctx.live or not pending(ctx):
        return None
    try:
        return reconcile(ctx)
    except ApplyError as error:
        return error.report

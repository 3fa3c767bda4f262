"""Prometheus metrics at /metrics, and the traffic panels of the dashboard, client and interface pages.

The panels (``/traffic/...``) are htmx partials; each page includes a
placeholder from templates/metrics/ that loads one.

Metrics: for a scraper holding METRICS_TOKEN.

``Authorization: Bearer <METRICS_TOKEN>``; with the setting empty the
endpoint does not exist (404).  Per client: lifetime rx/tx bytes, online and
suspended state; per interface: totals, clients, online clients, pending
apply; the panel itself: background jobs, backends, database size.
"""

import hmac
import os
import time

from flask import Blueprint, Response, abort, request
from markupsafe import Markup

from .. import jobs
from ..db import get_db
from ..services import accounting
from . import status_panels
from ._common import context, render, settings
from .auth import public, role

bp = Blueprint("metrics", __name__)

STATES = {"ok": 1, "warn": 0.5, "down": 0}


def _label(value):
    """A label value in the exposition format: backslash, quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text, samples):
        """samples: [(labels dict, value)]."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    def text(self):
        return "\n".join(self.lines) + "\n"


def render_metrics(db, config, job_list, panels, now):
    out = Exposition()
    timeout = int(config.get("ONLINE_TIMEOUT", 180))
    rows = list(db.query("SELECT c.name, c.rx_bytes, c.tx_bytes, c.last_handshake, c.suspended_reason, "
                         "c.period_rx_bytes, c.period_tx_bytes, i.name AS interface "
                         "FROM clients c JOIN interfaces i ON i.id = c.interface_id ORDER BY i.name, c.name"))

    def per_client(value):
        return [({"interface": r["interface"], "client": r["name"]}, value(r)) for r in rows]

    out.family("puqvpn_client_rx_bytes_total", "counter",
               "Bytes the server received from the client (its upload), lifetime.", per_client(lambda r: r["rx_bytes"]))
    out.family("puqvpn_client_tx_bytes_total", "counter",
               "Bytes the server sent to the client (its download), lifetime.", per_client(lambda r: r["tx_bytes"]))
    out.family("puqvpn_client_period_bytes", "gauge", "Bytes both ways in the current quota period.",
               per_client(lambda r: r["period_rx_bytes"] + r["period_tx_bytes"]))
    out.family("puqvpn_client_online", "gauge", "1 if the client handshook within ONLINE_TIMEOUT.",
               per_client(lambda r: int(accounting.is_online(r, now, timeout))))
    out.family("puqvpn_client_suspended", "gauge", "1 if the client is suspended (reason: admin, expired or quota).",
               [({"interface": r["interface"], "client": r["name"], "reason": r["suspended_reason"] or ""},
                 int(bool(r["suspended_reason"]))) for r in rows])

    interfaces = accounting.interface_totals(db)
    online = accounting.online_counts(db, config, now)["by_interface"]
    pending = {r["name"]: int(r["apply_error"] is not None) for r in db.query("SELECT name, apply_error FROM interfaces")}
    out.family("puqvpn_interface_rx_bytes_total", "counter", "Bytes received from all clients of the interface.",
               [({"interface": i["name"]}, i["rx"]) for i in interfaces])
    out.family("puqvpn_interface_tx_bytes_total", "counter", "Bytes sent to all clients of the interface.",
               [({"interface": i["name"]}, i["tx"]) for i in interfaces])
    out.family("puqvpn_interface_clients", "gauge", "Clients on the interface.",
               [({"interface": i["name"]}, i["clients"]) for i in interfaces])
    out.family("puqvpn_interface_online_clients", "gauge", "Clients online on the interface.",
               [({"interface": i["name"]}, online.get(i["name"], 0)) for i in interfaces])
    out.family("puqvpn_interface_apply_pending", "gauge", "1 if a change could not be applied live yet.",
               [({"interface": name}, value) for name, value in sorted(pending.items())])

    out.family("puqvpn_up", "gauge", "The panel answers.", [({}, 1)])
    out.family("puqvpn_backend_state", "gauge", "Backend health from the dashboard: 1 ok, 0.5 warning, 0 down.",
               [({"backend": p["title"]}, STATES.get(p.get("state"), 0)) for p in panels])
    out.family("puqvpn_job_runs_total", "counter", "Background job runs.",
               [({"job": j.name}, j.runs) for j in job_list])
    out.family("puqvpn_job_failures_total", "counter", "Background job runs that failed.",
               [({"job": j.name}, j.failures) for j in job_list])
    out.family("puqvpn_job_last_run_timestamp_seconds", "gauge", "Unix time of the job's last run.",
               [({"job": j.name}, round(j.last_run, 3)) for j in job_list])
    out.family("puqvpn_job_last_duration_seconds", "gauge", "How long the job's last run took.",
               [({"job": j.name}, round(j.last_duration, 6)) for j in job_list])
    try:
        size = os.path.getsize(config["DATABASE"])
    except OSError:
        size = 0
    out.family("puqvpn_database_size_bytes", "gauge", "Size of the SQLite database file.", [({}, size)])
    return out.text()


@bp.route("/metrics")
@public
def metrics():
    token = settings().get("METRICS_TOKEN", "")
    if not token:
        abort(404)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return Response("a valid bearer token is required\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'},
                        mimetype="text/plain")
    body = render_metrics(get_db(), settings(), list(jobs.JOBS), status_panels.collect(context()), time.time())
    return Response(body, mimetype="text/plain; version=0.0.4")


# -- traffic panels for the dashboard, the client page and the interface page ----------------
# Each page includes a small placeholder (templates/metrics/_*.html) that loads these with htmx.

def _chart_response(client_id, monthly):
    from ..services import charts
    db = get_db()
    if next(db.query("SELECT 1 FROM clients WHERE id = ?", [client_id]), None) is None:
        abort(404)
    chart = charts.client_monthly_chart if monthly else charts.client_daily_chart
    return Response(chart(db, client_id), mimetype="image/svg+xml")


@bp.route("/traffic/clients/<int:client_id>/day.svg")
@role("viewer")
def client_day_chart(client_id):
    return _chart_response(client_id, monthly=False)


@bp.route("/traffic/clients/<int:client_id>/month.svg")
@role("viewer")
def client_month_chart(client_id):
    return _chart_response(client_id, monthly=True)


@bp.route("/traffic/clients/<int:client_id>")
@role("viewer")
def client_charts(client_id):
    from ..services import charts
    db = get_db()
    client = next(db.query("SELECT * FROM clients WHERE id = ?", [client_id]), None)
    if client is None:
        abort(404)
    return render("metrics/client_charts.html", client=client,
                  daily=Markup(charts.client_daily_chart(db, client_id)),
                  monthly=Markup(charts.client_monthly_chart(db, client_id)))


@bp.route("/traffic/interfaces/<int:interface_id>/classes")
@role("viewer")
def interface_classes(interface_id):
    from ..services import shaping
    from ..services.system import CommandError
    db = get_db()
    interface = next(db.query("SELECT * FROM interfaces WHERE id = ?", [interface_id]), None)
    if interface is None:
        abort(404)
    clients = list(db.query("SELECT * FROM clients WHERE interface_id = ?", [interface_id]))
    error = None
    try:
        rows = shaping.class_counters(context(), interface, clients)
    except CommandError as failure:
        rows, error = [], str(failure)
    return render("metrics/interface_classes.html", interface=interface, rows=rows, error=error,
                  live=settings().bool("SYSTEM_APPLY"))


@bp.route("/traffic/dashboard")
@role("viewer")
def dashboard_traffic():
    db = get_db()
    return render("metrics/dashboard_traffic.html", totals=accounting.totals(db),
                  top=accounting.top_clients(db, limit=10), online=accounting.online_counts(db, settings()))

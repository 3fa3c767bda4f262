"""The audit log page, and the hook that records every state-changing request.

Every POST, PUT, PATCH and DELETE is recorded after it is answered, with the
endpoint as the action, the URL's arguments as the target and the status as
the outcome, so a new route is audited without remembering to.  A route adds
to its entry with ``note()``:

    from .audit import note
    note(target=f"client={client['name']}", detail="suspended for quota")

API requests are recorded as ``token:NAME`` from ``g.api_token``; anything
else may set ``g.audit_actor``.
Form fields are never copied into the log, and ``services.audit`` masks
anything secret-looking in what routes add.
"""

import logging

from flask import Blueprint, g, request
from flask_login import current_user

from ..db import connect, get_db
from ..services import audit
from ._common import render, settings
from .auth import role

bp = Blueprint("audit", __name__, url_prefix="/audit")
log = logging.getLogger("puqvpn.audit")

CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def note(detail=None, target=None, action=None, outcome=None):
    """Add to the audit entry of the current request (called from a route)."""
    if detail:
        g.setdefault("audit_detail", []).append(str(detail))
    if target is not None:
        g.audit_target = target
    if action is not None:
        g.audit_action = action
    if outcome is not None:
        g.audit_outcome = outcome


def skip():
    """This request recorded its own entries (the login does)."""
    g.audit_done = True


def outcome_for(status):
    if status in (401, 403, 429):
        return "denied"
    if status >= 400:
        return "failed"
    return "ok"


def _actor():
    token = g.get("api_token")
    actor = g.get("audit_actor") or (f"token:{token['name']}" if token else None) or g.get("audit_user")
    if not actor and current_user and current_user.is_authenticated:
        actor = current_user.username
    return actor or "anonymous"


def _target():
    if "audit_target" in g:
        return g.audit_target
    return " ".join(f"{key}={value}" for key, value in sorted((request.view_args or {}).items()))


def _record_request(response):
    if request.method not in CHANGING or g.get("audit_done"):
        return response
    status = response.status_code
    outcome = g.get("audit_outcome") or outcome_for(status)
    details = list(g.get("audit_detail", []))
    if status == 400 and request.endpoint and not g.get("csrf_valid") and not request.path.startswith("/api/"):
        outcome, details = "denied", details + ["missing or stale CSRF token"]
    if g.get("audit_refused_role"):
        outcome = "denied"
        details.append(g.audit_refused_role)
    details.append(f"HTTP {status}")
    try:
        db = get_db()
        if db.conn.in_transaction:   # a route failed mid-transaction: write on a clean connection
            db = connect(settings()["DATABASE"], migrate=False)
        audit.record(db, _actor(), request.remote_addr or "", g.get("audit_action") or request.endpoint
                     or f"{request.method} {request.path[:100]}", _target(), outcome, "; ".join(details))
    except Exception:   # an audit failure is logged loudly but does not turn a done change into an error
        log.exception("could not write the audit entry for %s %s", request.method, request.path[:200])
    return response


def init_app(app):
    @app.before_request
    def remember_user():
        # Logout and password changes end the session; keep who it was for the entry.
        if request.method in CHANGING and current_user and current_user.is_authenticated:
            g.audit_user = current_user.username

    app.after_request(_record_request)


@bp.route("/")
@role("admin")
def index():
    db = get_db()
    args = request.args
    filters = {
        "actor": args.get("actor", "")[:200],
        "action": args.get("action", "")[:200],
        "outcome": args.get("outcome") if args.get("outcome") in audit.OUTCOMES else "",
        "since": _day(args.get("since")),
        "until": _day(args.get("until")),
    }
    page = max(1, args.get("page", 1, type=int))
    per_page = 50
    rows, total = audit.search(db, page=page, per_page=per_page, **filters)
    values = {"entries": rows, "total": total, "filters": filters, "page": page,
              "pages": max(1, -(-total // per_page)), "actors": audit.actors(db), "outcomes": audit.OUTCOMES}
    if request.headers.get("HX-Target") == "audit-table":
        return render("audit/_table.html", **values)
    return render("audit/index.html", **values)


def _day(value):
    from ..services.validation import FieldError, date
    try:
        return date(value or "")
    except FieldError:
        return None

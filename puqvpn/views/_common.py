"""What the views share: settings, the live-apply call, form errors, and htmx-aware rendering."""

import json
import time

from flask import current_app, flash, render_template, request, url_for

from ..db import get_db
from ..services.system import Context


def settings():
    return current_app.config["PUQVPN"]


def context():
    return Context(get_db(), settings())


def apply_live(action, *args):
    """Push a committed change to the live system; a failure is shown, never silent.

    The change stays in the database and the interface is marked pending
    (see docs/architecture.md), so reconcile can finish it.  Returns True on success.
    """
    if not settings().bool("SYSTEM_APPLY"):
        return True
    from ..services import apply
    try:
        getattr(apply, action)(context(), *args)
    except apply.ApplyError as error:
        flash(f"Saved, but not yet live: {error}. The change is pending and will be retried.", "error")
        return False
    return True


def render(template, status=200, **values):
    """Render a page; htmx requests (not boosted) get the same template without the layout."""
    partial = bool(request.headers.get("HX-Request")) and not request.headers.get("HX-Boosted")
    values.setdefault("layout", "partial.html" if partial else "layout.html")
    return render_template(template, **values), status


def form_data(*names):
    """The posted form as a dict; checkboxes missing from the form count as off."""
    return {name: request.form.get(name, "") for name in names}


def now():
    return int(time.time())


# Optional pages in the menu: (endpoint, title, least role); shown when registered.
NAV = (
    ("ikev2.index", "IKEv2", "admin", "main"),
    ("share.index", "Share links", "operator", "system"),
    ("tokens.index", "API tokens", "admin", "system"),
    ("resolver.index", "DNS resolver", "admin", "system"),
    ("resolver.connections", "Connection log", "admin", "system"),
    ("backups.index", "Backups", "admin", "system"),
    ("accounts.index", "Accounts", "admin", "system"),
    ("audit.index", "Audit log", "admin", "system"),
)


def init_app(app):
    @app.context_processor
    def navigation():
        from flask_login import current_user
        if not current_user.is_authenticated:
            return {"extra_nav": [], "endpoints": current_app.view_functions}
        items = [{"url": url_for(endpoint), "title": title, "group": group} for endpoint, title, role, group in NAV
                 if endpoint in current_app.view_functions and current_user.can(role)]
        return {"extra_nav": items, "endpoints": current_app.view_functions}

    @app.context_processor
    def pending_changes():
        """Interfaces whose last live apply failed: every page shows them with a Retry button."""
        from flask_login import current_user
        if not current_user.is_authenticated:
            return {"pending": []}
        pending = list(get_db().query(
            "SELECT id, name, apply_error FROM interfaces WHERE apply_error IS NOT NULL"))
        # Failures no interface row can hold (e.g. removing a deleted interface).
        row = next(get_db().query("SELECT value FROM options WHERE key = 'apply_error'"), None)
        if row:
            pending.append({"id": None, "name": "The system", "apply_error": json.loads(row["value"])})
        return {"pending": pending}

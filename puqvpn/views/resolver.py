"""The clients' DNS resolver settings, and the connection log's "who was it?" lookup (admin only)."""

import ipaddress

from flask import Blueprint, flash, redirect, request, url_for

from ..db import get_db
from ..services import connlog, resolver
from ..services.system import CommandError
from ._common import context, render, settings
from .audit import note
from .auth import role

bp = Blueprint("resolver", __name__, url_prefix="/resolver")

FIELDS = ("forwarder1", "forwarder2", "cache_max_ttl", "blocklist", "block_action")


def _values(options):
    forwarders = list(options["forwarders"]) + ["", ""]
    return {"enabled": options["enabled"], "tls": options["tls"], "forwarder1": forwarders[0],
            "forwarder2": forwarders[1], "cache_max_ttl": options["cache_max_ttl"],
            "blocklist": options["blocklist"], "block_action": options["block_action"],
            "exclude": options["exclude"]}


def _page(values, errors=None, status=200):
    db = get_db()
    interfaces = list(db.query("SELECT id, name, address, address6, dns, enabled FROM interfaces ORDER BY name"))
    ctx = context()
    state = resolver.status_panel(ctx) if settings().bool("SYSTEM_APPLY") else None
    return render("resolver/index.html", status=status, values=values, errors=errors or {},
                  interfaces=interfaces, state=state, block_actions=resolver.BLOCK_ACTIONS,
                  effective={i["name"]: resolver.effective_dns(db, i) for i in interfaces})


@bp.route("/")
@role("admin")
def index():
    return _page(_values(resolver.load_options(get_db())))


@bp.route("/", methods=["POST"])
@role("admin")
def save():
    form = request.form
    names = [row["name"] for row in get_db().query("SELECT name FROM interfaces")]
    options = {
        "enabled": "enabled" in form,
        "tls": "tls" in form,
        "forwarders": [form.get("forwarder1", ""), form.get("forwarder2", "")],
        "cache_max_ttl": form.get("cache_max_ttl", ""),
        "blocklist": form.get("blocklist", ""),
        "block_action": form.get("block_action", ""),
        # A checked box means "push the resolver"; the option stores the exceptions.
        "exclude": [name for name in names if f"push_{name}" not in form],
    }
    shown = _values({**resolver.DEFAULTS, **options})
    try:
        _, changes = resolver.apply_options(context(), options)
    except resolver.ResolverError as error:
        note(str(error), outcome="failed")
        errors = dict(error.fields) or {"__all__": str(error)}
        if "forwarders" in errors:
            errors["forwarder1"] = errors.pop("forwarders")
        return _page(shown, errors, status=422)
    except CommandError as error:
        # Saved (the database is the truth) but not live: say so; Apply retries.
        note(str(error), outcome="failed")
        flash(f"Saved, but the resolver could not be started or reloaded: {error}", "error")
        return redirect(url_for("resolver.index"))
    note(f"enabled={int(options['enabled'])}")
    flash("Resolver settings saved." + (" " + "; ".join(changes) + "." if changes else ""), "success")
    return redirect(url_for("resolver.index"))


def _lookup_errors(values):
    errors = {}
    try:
        connlog.parse_time(values["time"])
    except connlog.ConnlogError as error:
        errors["time"] = str(error)
    if not values["port"].isdigit() or not 0 <= int(values["port"]) <= 65535:
        errors["port"] = "a port from 0 to 65535"
    for name in ("address", "dest"):
        if values[name]:
            try:
                ipaddress.ip_address(values[name])
            except ValueError:
                errors[name] = "an IPv4 or IPv6 address"
    return errors


@bp.route("/connections", methods=["GET", "POST"])
@role("admin")
def connections():
    """Recent logged connections, and the lookup for an abuse report (POST, so it is audited)."""
    store = connlog.open_store(settings()["CONNLOG_DATABASE"])
    try:
        values = {"port": "", "time": "", "address": "", "dest": ""}
        results, errors, status = None, {}, 200
        if request.method == "POST":
            values = {name: request.form.get(name, "").strip() for name in values}
            errors = _lookup_errors(values)
            if not errors:
                try:
                    results = connlog.who(store, values["port"], connlog.parse_time(values["time"]),
                                          values["address"] or None, values["dest"] or None)
                except connlog.ConnlogError as error:
                    errors["port"] = str(error)
            if errors:
                results, status = None, 422
            note(target=f"port={values['port']} time={values['time']}",
                 detail=f"{len(results)} match(es)" if results is not None else None)
        logging_on = [row["name"] for row in get_db().query(
            "SELECT name FROM interfaces WHERE conn_logging = 1 AND enabled = 1 ORDER BY name")]
        return render("resolver/connections.html", status=status, values=values, errors=errors,
                      results=results, recent=connlog.recent(store, limit=50), logging_on=logging_on,
                      retention=settings()["CONNLOG_RETENTION_DAYS"])
    finally:
        store.close()

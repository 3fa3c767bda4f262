"""WireGuard interfaces: list, create, edit, enable or disable, delete, apply."""

from flask import Blueprint, Response, abort, flash, redirect, request, url_for

from ..db import get_db
from ..services import clients, interfaces, wgconfig
from ..services.validation import RESERVED_PORTS, ValidationError
from ._common import apply_live, form_data, render, settings
from .auth import role

bp = Blueprint("interfaces", __name__, url_prefix="/interfaces")

FIELDS = ("name", "label", "address", "address6", "listen_port", "endpoint", "ext_device", "nat",
          "client_to_client", "dns", "mtu", "keepalive", "allowed_ips", "default_down_mbit",
          "default_up_mbit", "ikev2_enabled", "conn_logging", "enabled", "private_key")


def reserved_ports():
    # The panel's own port is taken too.
    return RESERVED_PORTS | {settings().int("PORT")}


def _load(interface_id):
    interface = interfaces.get(get_db(), interface_id)
    if interface is None:
        abort(404)
    return interface


def _posted():
    data = form_data(*FIELDS)
    for flag in ("nat", "client_to_client", "ikev2_enabled", "conn_logging", "enabled"):
        data[flag] = flag in request.form
    return data


@bp.route("/")
@role("viewer")
def index():
    return render("interfaces/list.html", interfaces=interfaces.list_all(get_db()))


@bp.route("/new", methods=["GET", "POST"])
@role("admin")
def new():
    db = get_db()
    if request.method == "POST":
        data = _posted()
        try:
            interface = interfaces.create(db, data, reserved_ports())
        except ValidationError as error:
            return render("interfaces/form.html", interface=None, values=data, errors=error.fields, status=422)
        apply_live("interface_changed", interface["id"])
        flash(f"Interface {interface['name']} created.", "success")
        return redirect(url_for("interfaces.show", interface_id=interface["id"]))
    values = dict(interfaces.DEFAULTS, name=interfaces.next_free_name(db),
                  listen_port=interfaces.next_free_port(db), address="10.8.0.1/24",
                  endpoint=request.host.split(":")[0])
    return render("interfaces/form.html", interface=None, values=values, errors={})


@bp.route("/<int:interface_id>")
@role("viewer")
def show(interface_id):
    interface = _load(interface_id)
    db = get_db()
    count = next(db.query("SELECT count(*) AS n FROM clients WHERE interface_id = ?", [interface_id]))["n"]
    return render("interfaces/detail.html", interface=interface, client_count=count)


@bp.route("/<int:interface_id>/edit", methods=["GET", "POST"])
@role("admin")
def edit(interface_id):
    interface = _load(interface_id)
    if request.method == "POST":
        data = _posted()
        try:
            interfaces.update(get_db(), interface_id, data, reserved_ports())
        except ValidationError as error:
            return render("interfaces/form.html", interface=interface, values=data, errors=error.fields, status=422)
        apply_live("interface_changed", interface_id)
        flash(f"Interface {interface['name']} saved.", "success")
        return redirect(url_for("interfaces.show", interface_id=interface_id))
    values = dict(interface)
    for name in ("default_down_mbit", "default_up_mbit"):
        values[name] = f"{interface[name]:g}"   # 20, not the REAL column's 20.0
    return render("interfaces/form.html", interface=interface, values=values, errors={})


@bp.route("/<int:interface_id>/enable", methods=["POST"])
@role("admin")
def enable(interface_id):
    _load(interface_id)
    interface = interfaces.set_enabled(get_db(), interface_id, True)
    apply_live("interface_changed", interface_id)
    flash(f"{interface['name']} enabled.", "success")
    return redirect(url_for("interfaces.show", interface_id=interface_id))


@bp.route("/<int:interface_id>/disable", methods=["POST"])
@role("admin")
def disable(interface_id):
    _load(interface_id)
    interface = interfaces.set_enabled(get_db(), interface_id, False)
    apply_live("interface_changed", interface_id)
    flash(f"{interface['name']} disabled: its clients are offline until it is enabled.", "info")
    return redirect(url_for("interfaces.show", interface_id=interface_id))


@bp.route("/<int:interface_id>/delete", methods=["GET", "POST"])
@role("admin")
def delete(interface_id):
    interface = _load(interface_id)
    db = get_db()
    count = next(db.query("SELECT count(*) AS n FROM clients WHERE interface_id = ?", [interface_id]))["n"]
    if request.method == "POST":
        if count and request.form.get("confirm") != interface["name"]:
            flash(f"Type {interface['name']} to confirm deleting it with its {count} client(s).", "error")
            return render("interfaces/delete.html", interface=interface, client_count=count, status=422)
        row = interfaces.delete(db, interface_id)
        apply_live("interface_removed", row)
        flash(f"Interface {row['name']} deleted" + (f" with {count} client(s)." if count else "."), "success")
        return redirect(url_for("interfaces.index"))
    return render("interfaces/delete.html", interface=interface, client_count=count)


@bp.route("/<int:interface_id>/server.conf")
@role("admin")
def server_config(interface_id):
    interface = _load(interface_id)
    text = wgconfig.render_server_config(interface, clients.for_interface(get_db(), interface_id))
    return Response(text, mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{interface["name"]}.conf"'})


@bp.route("/apply", methods=["POST"])
@role("admin")
def apply_all():
    """Make the live system match the database (reconcile)."""
    if apply_live("reconcile"):
        flash("The live system matches the database.", "success")
    return redirect(request.referrer if request.referrer and request.referrer.startswith(request.host_url)
                    else url_for("dashboard.index"))

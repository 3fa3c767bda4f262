"""Port forwards per interface: an external port of the server to a client's port."""

from flask import Blueprint, abort, flash, redirect, request, url_for

from ..db import get_db
from ..services import clients, interfaces, portforwards
from ..services.validation import ValidationError
from ._common import apply_live, form_data, render, settings
from .auth import role

bp = Blueprint("portforwards", __name__, url_prefix="/interfaces/<int:interface_id>/port-forwards")


def _interface(interface_id):
    row = interfaces.get(get_db(), interface_id)
    if row is None:
        abort(404)
    return row


def _page(interface, values=None, errors=None, status=200):
    db = get_db()
    return render("portforwards/list.html", interface=interface,
                  forwards=portforwards.list_for_interface(db, interface["id"]),
                  clients=clients.for_interface(db, interface["id"]),
                  values=values or {"proto": "tcp"}, errors=errors or {}, status=status)


@bp.route("/")
@role("viewer")
def index(interface_id):
    return _page(_interface(interface_id))


@bp.route("/", methods=["POST"])
@role("admin")
def create(interface_id):
    interface = _interface(interface_id)
    data = form_data("client_id", "proto", "ext_port", "dest_port")
    try:
        row = portforwards.create(get_db(), interface_id, data, settings().int("PORT"))
    except ValidationError as error:
        return _page(interface, data, error.fields, 422)
    apply_live("interface_changed", interface_id)
    flash(f"{row['proto']}/{row['ext_port']} now goes to port {row['dest_port']} of the client.", "success")
    return redirect(url_for("portforwards.index", interface_id=interface_id))


@bp.route("/<int:forward_id>/delete", methods=["POST"])
@role("admin")
def delete(interface_id, forward_id):
    _interface(interface_id)
    row = portforwards.get(get_db(), forward_id)
    if row is None or row["interface_id"] != interface_id:
        abort(404)
    portforwards.delete(get_db(), forward_id)
    apply_live("interface_changed", interface_id)
    flash(f"Port forward {row['proto']}/{row['ext_port']} removed.", "success")
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        return "", 200
    return redirect(url_for("portforwards.index", interface_id=interface_id))

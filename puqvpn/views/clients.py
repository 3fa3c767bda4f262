"""VPN clients: the searchable list, create, edit, suspend, resume, delete, profile and QR."""

import io

import segno
from flask import Blueprint, Response, abort, flash, redirect, request, url_for

from ..db import get_db
from ..services import clients, interfaces, wgconfig
from ..services.validation import ValidationError
from ._common import apply_live, form_data, now, render, settings
from .auth import role

bp = Blueprint("clients", __name__, url_prefix="/clients")

FIELDS = ("interface", "name", "ip", "ip6", "username", "password", "down_mbit", "up_mbit",
          "expires_at", "quota_gb", "quota_reset_day", "note")


def _load(client_id):
    client = clients.get(get_db(), client_id)
    if client is None:
        abort(404)
    return client, interfaces.get(get_db(), client["interface_id"])


def _list_args():
    args = request.args
    return {
        "q": args.get("q", "")[:100],
        "status": args.get("status") if args.get("status") in clients.STATUSES else "",
        "interface_id": args.get("interface", type=int),
        "sort": args.get("sort") if args.get("sort") in clients.SORTS else "name",
        "descending": args.get("order") == "desc",
        "page": max(1, args.get("page", 1, type=int)),
        "per_page": min(200, max(10, args.get("per_page", 50, type=int))),
    }


@bp.route("/")
@role("viewer")
def index():
    db = get_db()
    filters = _list_args()
    rows, total = clients.search(db, now=now(), online_timeout=settings().int("ONLINE_TIMEOUT"), **filters)
    values = {"clients": rows, "total": total, "filters": filters,
              "now": now(), "online_timeout": settings().int("ONLINE_TIMEOUT"),
              "pages": max(1, -(-total // filters["per_page"]))}
    # Active search and paging swap only the table.
    if request.headers.get("HX-Target") == "client-table":
        return render("clients/_table.html", **values)
    # The filter needs names only; list_all() would count every client of every interface.
    values["interfaces"] = list(db.query("SELECT id, name FROM interfaces ORDER BY name"))
    return render("clients/list.html", **values)


@bp.route("/new", methods=["GET", "POST"])
@role("operator")
def new():
    db = get_db()
    ifaces = interfaces.list_all(db)
    if request.method == "POST":
        data = form_data(*FIELDS)
        try:
            client = clients.create(db, data)
        except ValidationError as error:
            return render("clients/form.html", client=None, values=data, errors=error.fields,
                          interfaces=ifaces, status=422)
        apply_live("client_changed", client["id"])
        flash(f"Client {client['name']} created.", "success")
        return redirect(url_for("clients.show", client_id=client["id"]))
    chosen = request.args.get("interface", type=int) or (ifaces[0]["id"] if ifaces else None)
    return render("clients/form.html", client=None, errors={}, interfaces=ifaces,
                  values={"interface": chosen, "down_mbit": 0, "up_mbit": 0, "quota_gb": 0,
                          "quota_reset_day": 1})


@bp.route("/<int:client_id>")
@role("viewer")
def show(client_id):
    client, interface = _load(client_id)
    config = None
    if client["private_key"]:
        config = clients.wireguard_profile(get_db(), interface, client)
    return render("clients/detail.html", client=client, interface=interface, config=config,
                  client_status=clients.status(client, now(), settings().int("ONLINE_TIMEOUT")))


@bp.route("/<int:client_id>/edit", methods=["GET", "POST"])
@role("operator")
def edit(client_id):
    client, interface = _load(client_id)
    if request.method == "POST":
        data = form_data(*FIELDS[1:])
        try:
            clients.update(get_db(), client_id, data)
        except ValidationError as error:
            return render("clients/form.html", client=client, values=data, errors=error.fields,
                          interfaces=[interface], status=422)
        apply_live("client_changed", client_id)
        flash(f"Client {data['name']} saved.", "success")
        return redirect(url_for("clients.show", client_id=client_id))
    values = dict(client, password="")
    for name in ("down_mbit", "up_mbit", "quota_gb"):
        values[name] = f"{client[name]:g}"      # 20, not the REAL column's 20.0
    return render("clients/form.html", client=client, values=values, errors={}, interfaces=[interface])


def _back_to(client_id):
    # htmx actions from a list row re-render that row; a plain form goes back to the client page.
    return redirect(request.form.get("next") if (request.form.get("next") or "").startswith("/clients")
                    else url_for("clients.show", client_id=client_id))


@bp.route("/<int:client_id>/suspend", methods=["POST"])
@role("operator")
def suspend(client_id):
    client, _interface = _load(client_id)
    clients.suspend(get_db(), client_id, "admin")
    apply_live("client_changed", client_id)
    flash(f"{client['name']} suspended: its tunnels are cut off.", "info")
    return _back_to(client_id)


@bp.route("/<int:client_id>/resume", methods=["POST"])
@role("operator")
def resume(client_id):
    client, interface = _load(client_id)
    expires = request.form.get("expires_at") if "expires_at" in request.form else None
    try:
        clients.resume(get_db(), client_id, expires)
    except ValidationError as error:
        flash("Not resumed: " + "; ".join(error.fields.values()), "error")
        return _back_to(client_id)
    apply_live("client_changed", client_id)
    flash(f"{client['name']} resumed.", "success")
    return _back_to(client_id)


@bp.route("/<int:client_id>/password", methods=["POST"])
@role("operator")
def new_password(client_id):
    client, _interface = _load(client_id)
    try:
        clients.set_password(get_db(), client_id, request.form.get("password") or None)
    except Exception as error:
        flash(f"Password not changed: {error}", "error")
        return _back_to(client_id)
    apply_live("client_changed", client_id)
    flash(f"New IKEv2 password set for {client['name']}.", "success")
    return _back_to(client_id)


@bp.route("/<int:client_id>/delete", methods=["GET", "POST"])
@role("operator")
def delete(client_id):
    client, interface = _load(client_id)
    if request.method == "POST":
        row = clients.delete(get_db(), client_id)
        apply_live("client_removed", row)
        flash(f"Client {row['name']} deleted.", "success")
        if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
            return "", 200   # the row swaps itself out
        return redirect(url_for("clients.index"))
    return render("clients/delete.html", client=client, interface=interface)


def _config_or_404(client_id):
    client, interface = _load(client_id)
    if not client["private_key"]:
        abort(409, "This client was imported without its private key, so its profile cannot be rebuilt.")
    return client, interface, clients.wireguard_profile(get_db(), interface, client)


@bp.route("/<int:client_id>/wireguard.conf")
@role("operator")
def wireguard_conf(client_id):
    client, interface, text = _config_or_404(client_id)
    filename = wgconfig.client_config_filename(interface, client)
    return Response(text, mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def qr_svg(text):
    buffer = io.BytesIO()
    segno.make(text, error="l", micro=False).save(buffer, kind="svg", scale=4, border=2,
                                                  xmldecl=False, svgns=True, title="WireGuard profile")
    return buffer.getvalue()


@bp.route("/<int:client_id>/wireguard.svg")
@role("operator")
def wireguard_qr(client_id):
    _client, _interface, text = _config_or_404(client_id)
    return Response(qr_svg(text), mimetype="image/svg+xml")

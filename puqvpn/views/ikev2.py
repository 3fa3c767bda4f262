"""IKEv2 pages: certificates, advanced settings, online sessions, and per-client profile downloads.

Routes stay thin: pki, strongswan and profiles do the work.  A change to the
certificates or the settings is pushed with a reconcile, so charon holds the
new certificate or proposals at once (or the change is marked pending).
"""

from flask import Blueprint, Response, abort, flash, redirect, request, url_for

from ..db import get_db
from ..services import clients, interfaces, pki, profiles, strongswan
from ..services.validation import ValidationError
from ._common import apply_live, context, render
from .audit import note
from .auth import role

bp = Blueprint("ikev2", __name__, url_prefix="/ikev2")

CA_FIELDS = ("common_name", "organization", "country", "state", "locality", "unit", "key_type")
SERVER_FIELDS = ("domain", "ipv4", "ipv6")
OPTION_FIELDS = ("ike_proposals", "esp_proposals", "dpd_delay", "ike_rekey_time", "child_rekey_time")


def init_app(app):
    @app.context_processor
    def ikev2_helpers():
        def status():
            """charon's state for the dashboard, once IKEv2 is in use (certificates or an interface)."""
            db = get_db()
            in_use = pki.get(db, "ca") is not None or any(i["ikev2_enabled"] for i in interfaces.list_all(db))
            return strongswan.charon_status(context()) if in_use else None
        return {"ikev2_ready": lambda: pki.ready(get_db()), "ikev2_status": status}


def _certificates():
    db = get_db()
    found = {}
    for kind in ("ca", "server"):
        row = pki.get(db, kind)
        found[kind] = dict(pki.cert_info(row["cert_pem"]), created_at=row["created_at"]) if row else None
    return found


def _page(errors=None, values=None, status=200):
    db = get_db()
    errors = errors or {}
    return render("ikev2/index.html", status=status, certs=_certificates(), errors=errors,
                  open_ca=any(k.startswith("ca_") for k in errors),
                  open_server=any(k.startswith("server") for k in errors),
                  values=values or {}, key_types=pki.KEY_TYPES, status_info=strongswan.charon_status(context()),
                  enabled=[i for i in interfaces.list_all(db) if i["ikev2_enabled"]])


def _download(name, mime, data):
    return Response(data, mimetype=mime, headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


@bp.route("/")
@role("admin")
def index():
    return _page()


@bp.route("/ca/generate", methods=["POST"])
@role("admin")
def generate_ca():
    values = {name: request.form.get(name, "") for name in CA_FIELDS}
    try:
        pki.generate_ca(get_db(), values["common_name"], values["organization"], values["country"],
                        values["state"], values["locality"], values["unit"], values["key_type"] or "rsa3072")
    except ValidationError as error:
        note(outcome="failed", detail=str(error))
        return _page(errors={f"ca_{k}": v for k, v in error.fields.items()} or {"ca": str(error)},
                     values=values, status=422)
    note(target="ca", detail=values["common_name"])
    flash("Root CA generated. Generate the server certificate next; clients need the new CA.", "success")
    apply_live("reconcile")
    return redirect(url_for("ikev2.index"))


@bp.route("/ca/import", methods=["POST"])
@role("admin")
def import_ca():
    cert = request.files.get("cert")
    key = request.files.get("key")
    cert_data = cert.read(1 << 20) if cert and cert.filename else request.form.get("cert_pem", "").encode()
    key_data = key.read(1 << 20) if key and key.filename else request.form.get("key_pem", "").encode()
    try:
        pki.import_ca(get_db(), cert_data, key_data)
    except ValidationError as error:
        note(outcome="failed", detail=str(error))
        return _page(errors={"import": str(error)}, status=422)
    note(target="ca", detail="imported")
    flash("CA imported.", "success")
    apply_live("reconcile")
    return redirect(url_for("ikev2.index"))


@bp.route("/server/generate", methods=["POST"])
@role("admin")
def generate_server():
    values = {name: request.form.get(name, "") for name in SERVER_FIELDS}
    try:
        pki.generate_server(get_db(), values["domain"], values["ipv4"], values["ipv6"])
    except ValidationError as error:
        note(outcome="failed", detail=str(error))
        return _page(errors={f"server_{k}": v for k, v in error.fields.items()} or {"server": str(error)},
                     values=values, status=422)
    note(target="server", detail=values["domain"])
    flash("Server certificate generated.", "success")
    apply_live("reconcile")
    return redirect(url_for("ikev2.index"))


@bp.route("/<any(ca, server):cert>/delete", methods=["POST"])
@role("admin")
def delete(cert):
    if request.form.get("confirm") != "1":
        return _page(errors={f"delete_{cert}": "tick the box to confirm"}, status=422)
    pki.delete(get_db(), cert)
    if cert == "ca":
        pki.delete(get_db(), "server")      # nothing can verify it any more
    note(target=cert)
    flash("Deleted. IKEv2 is off until both certificates exist again; WireGuard is unaffected.", "success")
    apply_live("reconcile")
    return redirect(url_for("ikev2.index"))


@bp.route("/ca.pem")
@role("operator")
def ca_pem():
    row = pki.get(get_db(), "ca") or abort(404)
    return _download(*profiles.ca_pem_file(row["cert_pem"]))


@bp.route("/ca.crt")
@role("operator")
def ca_der():
    row = pki.get(get_db(), "ca") or abort(404)
    return _download(*profiles.ca_der_file(row["cert_pem"]))


@bp.route("/ca-key", methods=["POST"])
@role("admin")
def ca_key():
    row = pki.get(get_db(), "ca") or abort(404)
    if request.form.get("confirm") != "1":
        return _page(errors={"ca_key": "tick the box to confirm"}, status=422)
    note(target="ca key")
    return _download("vpn-ca.key", "application/x-pem-file", row["key_pem"].encode())


# ------------------------------------------------------------------ advanced settings

@bp.route("/settings", methods=["GET", "POST"])
@role("admin")
def settings_page():
    db = get_db()
    errors, values = {}, None
    if request.method == "POST":
        values = {name: request.form.get(name, "") for name in OPTION_FIELDS}
        values["mobike"] = "1" if request.form.get("mobike") else "0"
        values["fragmentation"] = "1" if request.form.get("fragmentation") else "0"
        try:
            strongswan.set_options(db, values)
        except ValidationError as error:
            errors = error.fields
        else:
            note(detail="advanced settings")
            flash("Saved. Clients pick up new proposals on their next connect; profiles use them now.", "success")
            apply_live("reconcile")
            return redirect(url_for("ikev2.settings_page"))
    options = strongswan.get_options(db)
    shown = values or dict(options, ike_proposals="\n".join(options["ike_proposals"]),
                           esp_proposals="\n".join(options["esp_proposals"]))
    return render("ikev2/settings.html", status=422 if errors else 200, values=shown, errors=errors,
                  ike_notes=strongswan.IKE_PROPOSALS, esp_notes=strongswan.ESP_PROPOSALS)


@bp.route("/settings/reset", methods=["POST"])
@role("admin")
def reset_settings():
    strongswan.reset_options(get_db())
    note(detail="advanced settings reset")
    flash("Advanced settings are back to the defaults.", "success")
    apply_live("reconcile")
    return redirect(url_for("ikev2.settings_page"))


# ------------------------------------------------------------------ sessions

@bp.route("/sessions")
@role("viewer")
def sessions():
    ctx = context()
    error, rows = None, []
    try:
        rows = strongswan.list_sessions(ctx)
    except strongswan.StrongswanError as failure:
        error = str(failure)
    names = {}
    for row in rows:
        if row["client_id"] is not None and row["client_id"] not in names:
            client = clients.get(get_db(), row["client_id"])
            names[row["client_id"]] = client["name"] if client else None
    return render("ikev2/sessions.html", sessions=rows, names=names, error=error)


@bp.route("/sessions/<int:ike_id>/drop", methods=["POST"])
@role("operator")
def drop(ike_id):
    try:
        strongswan.terminate_sa(context(), ike_id)
    except strongswan.StrongswanError as error:
        flash(str(error), "error")
    else:
        note(target=str(ike_id))
        flash("Connection dropped. The client may connect again unless it is suspended.", "success")
    return redirect(url_for("ikev2.sessions"))


# ------------------------------------------------------------------ profiles

@bp.route("/clients/<int:client_id>/<any(sswan, mobileconfig, windows, nmconnection, ca):fmt>")
@role("operator")
def profile(client_id, fmt):
    db = get_db()
    client = clients.get(db, client_id) or abort(404)
    interface = interfaces.get(db, client["interface_id"])
    if fmt == "ca":
        row = pki.get(db, "ca") or abort(404)
        return _download(*profiles.ca_der_file(row["cert_pem"]))
    try:
        name, mime, data = profiles.build(db, fmt, interface, client, strongswan.get_options(db))
    except profiles.ProfileError as error:
        flash(str(error), "error")
        return redirect(url_for("clients.show", client_id=client_id))
    note(target=client["name"], detail=fmt)
    return _download(name, mime, data)

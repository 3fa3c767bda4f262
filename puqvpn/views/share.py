"""One-time share links: the public page at /s/<token>, and the operator's list, create and revoke.

The public page needs no login.  Opening the link shows a landing page;
pressing "Show my VPN setup" counts one use (see services/share_links.py)
and leads to the setup page, whose download links carry a signed visit key
so the downloads of that visit are free.  An expired, used-up or revoked
link gets a plain 410 page.
"""

import base64

from flask import (Blueprint, Response, abort, current_app, flash, redirect, render_template, request,
                   url_for)

from .. import csrf
from ..db import get_db
from ..services import clients, interfaces, share_links, wgconfig
from ..services.validation import ValidationError
from ._common import render, settings
from .auth import public, role

bp = Blueprint("share", __name__)

# (platform key, title, IKEv2 profile kind): the setup steps shown per platform.
PLATFORMS = (
    ("android", "Android", "sswan"),
    ("ios", "iPhone and iPad", "mobileconfig"),
    ("macos", "macOS", "mobileconfig"),
    ("windows", "Windows", "windows"),
    ("linux", "Linux (NetworkManager)", "nmconnection"),
)


def _secret():
    return current_app.config["SECRET_KEY"]


def _platform(user_agent):
    """Best guess at the visitor's platform, to show its steps first."""
    agent = (user_agent or "").lower()
    if "android" in agent:
        return "android"
    if "iphone" in agent or "ipad" in agent:
        return "ios"
    if "macintosh" in agent or "mac os x" in agent:
        return "macos"
    if "windows" in agent:
        return "windows"
    if "linux" in agent:
        return "linux"
    return None


def _gone():
    return render_template("share/gone.html"), 410


def _visit(token):
    """(link, client, interface) for a download in a valid visit, or abort with 410."""
    row = share_links.find(get_db(), token)
    if not share_links.visit_valid(_secret(), row, request.args.get("v", "")):
        abort(410)
    client = clients.get(get_db(), row["client_id"])
    return row, client, interfaces.get(get_db(), client["interface_id"])


@bp.route("/s/<token>", methods=["GET"])
@public
def page(token):
    row = share_links.find(get_db(), token)
    if row is None:
        return _gone()
    visit = request.args.get("v", "")
    if visit and share_links.visit_valid(_secret(), row, visit):
        return _setup_page(token, row, visit)
    if share_links.state(row) != "active":
        return _gone()
    client = clients.get(get_db(), row["client_id"])
    return render_template("share/landing.html", token=token, client=client,
                           left=row["max_uses"] - row["uses"], visit_minutes=share_links.VISIT_MINUTES)


@bp.route("/s/<token>", methods=["POST"])
@public
def open_link(token):
    row = share_links.find(get_db(), token)
    used = share_links.consume(get_db(), row) if row else None
    if used is None:
        return _gone()
    return redirect(url_for("share.page", token=token, v=share_links.visit_key(_secret(), used)), 303)


def _setup_page(token, row, visit):
    from .clients import qr_svg
    db = get_db()
    client = clients.get(db, row["client_id"])
    interface = interfaces.get(db, client["interface_id"])
    config = clients.wireguard_profile(get_db(), interface, client) if client["private_key"] else None
    ikev2 = None
    if interface["ikev2_enabled"]:
        ikev2 = _ikev2_downloads(token, client, interface, visit)
    platform = _platform(request.headers.get("User-Agent"))
    return render_template(
        "share/setup.html", token=token, visit=visit, client=client, interface=interface, config=config,
        qr=qr_svg(config) if config else None,
        visit_minutes=share_links.VISIT_MINUTES, ikev2=ikev2, platform=platform,
        platforms=sorted(PLATFORMS, key=lambda p: p[0] != platform),
        suspended=bool(client["suspended_reason"]))


def _ikev2_downloads(token, client, interface, visit):
    """What the IKEv2 section can offer: the CA, and which profiles render (or why none do)."""
    from .api import ApiError, ikev2_profile
    from ..services import pki
    has_ca = pki.get(get_db(), "ca") is not None
    available, problem = {}, None
    for _key, _title, kind in PLATFORMS:
        if kind in available:
            continue
        try:
            ikev2_profile(get_db(), client, interface, kind)
        except ApiError as error:
            problem = error.message
            continue
        available[kind] = url_for("share.ikev2_download", token=token, kind=kind, v=visit)
    return {"ca_url": url_for("share.ca", token=token, v=visit) if has_ca else None,
            "profiles": available, "problem": problem, "server": pki.server_identity(get_db()) or interface["endpoint"]}


@bp.route("/s/<token>/wireguard.conf")
@public
def wireguard_conf(token):
    _row, client, interface = _visit(token)
    if not client["private_key"]:
        abort(410)
    text = clients.wireguard_profile(get_db(), interface, client)
    filename = wgconfig.client_config_filename(interface, client)
    return Response(text, mimetype="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.route("/s/<token>/ca.crt")
@public
def ca(token):
    from ..services import pki, profiles
    _visit(token)
    row = pki.get(get_db(), "ca")
    if row is None:
        abort(404)
    # DER .crt: what phones and Windows install from a download.
    filename, media, body = profiles.ca_der_file(row["cert_pem"])
    return Response(body, mimetype=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.route("/s/<token>/ikev2/<kind>")
@public
def ikev2_download(token, kind):
    from .api import IKEV2_PROFILES, ApiError, ikev2_profile
    _row, client, interface = _visit(token)
    if kind not in IKEV2_PROFILES:
        abort(404)
    try:
        filename, media, body = ikev2_profile(get_db(), client, interface, kind)
    except ApiError as error:
        abort(409, error.message)
    return Response(body, mimetype=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# ------------------------------------------------------------------ operators

@bp.route("/share-links/")
@role("operator")
def index():
    links = share_links.list_links(get_db(), active_only=request.args.get("all") != "1")
    return render("share/index.html", links=links, show_all=request.args.get("all") == "1")


@bp.route("/clients/<int:client_id>/share-links", methods=["POST"])
@role("operator")
def create(client_id):
    client = clients.get(get_db(), client_id)
    if client is None:
        abort(404)
    try:
        link, token = share_links.create(get_db(), client_id, request.form.get("expires_in_hours"),
                                         request.form.get("max_uses"))
    except ValidationError as error:
        flash("No link made: " + "; ".join(error.fields.values()), "error")
        return redirect(url_for("clients.show", client_id=client_id))
    base = (settings().get("PUBLIC_URL") or request.host_url).rstrip("/")
    return render("share/created.html", client=client, link=link, url=base + url_for("share.page", token=token))


@bp.route("/share-links/<int:link_id>/revoke", methods=["POST"])
@role("operator")
def revoke(link_id):
    row = share_links.revoke(get_db(), link_id)
    if row is None:
        abort(404)
    flash("Share link revoked: it no longer opens.", "success")
    back = request.form.get("next") or ""
    if back.startswith("/") and not back.startswith("//"):
        return redirect(back)
    return redirect(url_for("share.index"))


def init_app(app):
    # The public page's one form carries no session; a forged POST could only spend a use
    # of a link whose secret URL the forger already has.
    csrf.exempt(open_link)

    @app.template_filter("b64")
    def b64(data):
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()

    @app.template_global()
    def share_links_for(client_id):
        return share_links.list_links(get_db(), client_id=client_id, active_only=True)

    @app.errorhandler(410)
    def gone(error):
        if request.path.startswith("/s/"):
            return _gone()
        return error

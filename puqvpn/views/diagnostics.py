"""Diagnostics per interface: what the system runs, the firewall with counters, and quick checks."""

import time

from flask import Blueprint, abort

from ..db import get_db
from ..services import clients, diagnostics, interfaces, wireguard
from ..services.system import CommandError
from ._common import context, render, settings
from .auth import role

bp = Blueprint("diagnostics", __name__, url_prefix="/diagnostics")


@bp.route("/interfaces/<int:interface_id>")
@role("operator")
def interface(interface_id):
    db = get_db()
    row = interfaces.get(db, interface_id)
    if row is None:
        abort(404)
    ctx = context()
    if not ctx.live:
        return render("diagnostics/interface.html", interface=row, live=False, checks=[], outputs=[], peers=[])
    peers, peers_error = [], None
    if row["enabled"]:
        try:
            status = wireguard.dump(ctx, row["name"])
        except (CommandError, wireguard.WireGuardError) as error:
            status, peers_error = {}, str(error)
        names = {c["public_key"]: c for c in clients.for_interface(db, interface_id)}
        now = int(time.time())
        for key, peer in sorted(status.items(), key=lambda item: -item[1]["latest_handshake"]):
            client = names.get(key)
            peers.append({**peer, "public_key": key, "client": client,
                          "age": now - peer["latest_handshake"] if peer["latest_handshake"] else None})
    return render("diagnostics/interface.html", interface=row, live=True,
                  checks=diagnostics.checks(ctx, row), outputs=diagnostics.raw_outputs(ctx, row),
                  peers=peers, peers_error=peers_error, online_timeout=settings().int("ONLINE_TIMEOUT"))

"""The dashboard: counts, backends and anything that needs the admin's attention."""

from flask import Blueprint

from ..db import get_db
from ..services import clients, interfaces
from . import status_panels
from ._common import context, now, render, settings
from .auth import role

bp = Blueprint("dashboard", __name__)


@bp.route("/")
@role("viewer")
def index():
    db = get_db()
    counts = clients.counts(db, now(), settings().int("ONLINE_TIMEOUT"))
    ifaces = interfaces.list_all(db)
    return render("dashboard/index.html", counts=counts, interfaces=ifaces,
                  panels=status_panels.collect(context()))

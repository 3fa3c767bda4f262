"""API tokens for admins: list, create (the token is shown once), revoke, delete."""

from flask import Blueprint, abort, flash, redirect, url_for

from ..db import get_db
from ..services import tokens
from ..services.validation import ValidationError
from ._common import form_data, render
from .auth import role

bp = Blueprint("tokens", __name__, url_prefix="/tokens")


@bp.route("/")
@role("admin")
def index():
    rows = tokens.list_all(get_db())
    for row in rows:
        row["state"] = tokens.state(row)
    return render("tokens/index.html", tokens=rows, values={"role": "operator"}, errors={})


@bp.route("/", methods=["POST"])
@role("admin")
def create():
    data = form_data("name", "role", "allowed_ips", "expires_at")
    try:
        row, token = tokens.create(get_db(), data["name"], data["role"], data["allowed_ips"],
                                   data["expires_at"] or None)
    except ValidationError as error:
        rows = tokens.list_all(get_db())
        for row in rows:
            row["state"] = tokens.state(row)
        return render("tokens/index.html", tokens=rows, values=data, errors=error.fields, status=422)
    # Shown on this response only: nothing can display it again.
    return render("tokens/created.html", token_row=row, token=token)


@bp.route("/<int:token_id>/revoke", methods=["POST"])
@role("admin")
def revoke(token_id):
    row = tokens.revoke(get_db(), token_id)
    if row is None:
        abort(404)
    flash(f"Token {row['name']} revoked: requests with it are refused from now on.", "success")
    return redirect(url_for("tokens.index"))


@bp.route("/<int:token_id>/delete", methods=["POST"])
@role("admin")
def delete(token_id):
    row = tokens.get(get_db(), token_id)
    if row is None:
        abort(404)
    if not row["revoked_at"]:
        flash("Revoke a token before deleting it.", "error")
        return redirect(url_for("tokens.index"))
    tokens.delete(get_db(), token_id)
    flash(f"Token {row['name']} deleted.", "success")
    return redirect(url_for("tokens.index"))

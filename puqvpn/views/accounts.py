"""Panel accounts (admin only): add and remove admins, operators and viewers, set roles,
reset passwords and lost second factors.

A new or reset password is shown once on the page that answers the form; it
never goes into a redirect, a flash message or the audit log.
"""

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask_login import current_user

from ..db import get_db
from ..services import users
from ..services.validation import ValidationError
from ._common import render
from .audit import note
from .auth import role

bp = Blueprint("accounts", __name__, url_prefix="/accounts")


def _load(user_id):
    user = users.get(get_db(), user_id)
    if user is None:
        abort(404)
    note(target=f"user={user['username']}")
    return user


def _page(status=200, **values):
    values.setdefault("errors", {})
    values.setdefault("values", {"role": "operator"})
    return render("accounts/index.html", status=status, accounts=users.list_all(get_db()),
                  roles=users.ROLES, me=current_user.row["id"], **values)


@bp.route("/")
@role("admin")
def index():
    return _page()


@bp.route("/new", methods=["POST"])
@role("admin")
def new():
    values = {"username": request.form.get("username", ""), "role": request.form.get("role", "")}
    note(target=f"user={values['username'][:64]}")
    try:
        user, password = users.create_user(get_db(), values["username"], request.form.get("password") or None,
                                           values["role"])
    except ValidationError as error:
        return _page(422, values=values, errors=error.fields)
    note(detail=f"role {user['role']}")
    shown = None if request.form.get("password") else password
    return _page(created={"username": user["username"], "password": shown})


@bp.route("/<int:user_id>/role", methods=["POST"])
@role("admin")
def set_role(user_id):
    user = _load(user_id)
    wanted = request.form.get("role", "")
    try:
        users.set_role(get_db(), user_id, wanted)
    except ValidationError as error:
        note(outcome="failed", detail=str(error))
        flash("Role not changed: " + "; ".join(error.fields.values()), "error")
        return redirect(url_for("accounts.index"))
    note(detail=f"role {user['role']} -> {wanted}")
    flash(f"{user['username']} is now {wanted}.", "success")
    return redirect(url_for("accounts.index"))


@bp.route("/<int:user_id>/password", methods=["POST"])
@role("admin")
def reset_password(user_id):
    user = _load(user_id)
    if user_id == current_user.row["id"]:
        note(outcome="failed", detail="own account")
        flash("Change your own password under Change password.", "info")
        return redirect(url_for("auth.change_password"))
    password = users.set_password(get_db(), user["username"])
    return _page(reset={"username": user["username"], "password": password})


@bp.route("/<int:user_id>/second-factor", methods=["POST"])
@role("admin")
def reset_second_factor(user_id):
    user = _load(user_id)
    users.reset_second_factor(get_db(), user_id)
    flash(f"Two-factor login of {user['username']} is off and their sessions are ended; "
          "they set it up again at their next login.", "success")
    return redirect(url_for("accounts.index"))


@bp.route("/<int:user_id>/delete", methods=["POST"])
@role("admin")
def delete(user_id):
    user = _load(user_id)
    if user_id == current_user.row["id"]:
        note(outcome="failed", detail="own account")
        flash("You cannot remove your own account while logged in with it.", "error")
        return redirect(url_for("accounts.index"))
    try:
        users.delete_user(get_db(), user_id)
    except ValidationError as error:
        note(outcome="failed", detail=str(error))
        flash("Not removed: " + "; ".join(error.fields.values()), "error")
        return redirect(url_for("accounts.index"))
    flash(f"Account {user['username']} removed.", "success")
    return redirect(url_for("accounts.index"))

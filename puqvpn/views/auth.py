"""Logging in and out, changing one's password, and the role check on every route.

Every endpoint is closed by default: a view is reachable only when logged in
with at least the role it declares through ``@role("viewer")`` etc. (admin
when it declares nothing).  ``@public`` opens one, as the login page and the
token-authenticated API do.
"""

import functools

from flask import (Blueprint, current_app, flash, redirect, render_template, request,
                   session, url_for)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from ..db import get_db
from ..services import users
from ..services.util import now_iso
from ..services.validation import ValidationError

bp = Blueprint("auth", __name__, url_prefix="/auth")
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please log in."
login_manager.session_protection = "basic"

RANK = {"viewer": 1, "operator": 2, "admin": 3}


class User(UserMixin):
    def __init__(self, row):
        self.row = row
        self.username = row["username"]
        self.role = row["role"]

    def get_id(self):
        # The version ends every session when the password changes.
        return f"{self.row['id']}:{self.row['session_version']}"

    def can(self, role):
        return RANK[self.role] >= RANK[role]


@login_manager.user_loader
def load_user(user_id):
    try:
        id_part, version = (int(part) for part in user_id.split(":"))
    except ValueError:
        return None
    row = users.get(get_db(), id_part)
    if row is None or row["session_version"] != version:
        return None
    return User(row)


def role(name):
    """Declare the least role a view needs."""
    def decorate(view):
        view.required_role = name
        return view
    return decorate


def public(view):
    """No login needed (the view does its own checks, if any)."""
    view.public = True
    return view


def required_role(view):
    return None if getattr(view, "public", False) else getattr(view, "required_role", "admin")


def enforce_roles():
    if request.endpoint is None or request.endpoint == "static":
        return None
    view = current_app.view_functions.get(request.endpoint)
    needed = required_role(view)
    if needed is None:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.can(needed):
        return render_template("errors.html", code=403, title="Not allowed",
                               message=f"This needs the {needed} role; you are {current_user.role}."), 403
    return None


def init_app(app):
    login_manager.init_app(app)
    app.before_request(enforce_roles)

    @app.context_processor
    def inject_roles():
        return {"can": lambda name: current_user.is_authenticated and current_user.can(name)}


def _safe_next(target):
    # Only same-site paths, never //host or a scheme.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    error = None
    if request.method == "POST":
        user = users.verify(get_db(), request.form.get("username", ""), request.form.get("password", ""))
        if user is None:
            error = "Wrong username or password."
        else:
            session.clear()
            session.permanent = True
            login_user(User(user))
            get_db().execute("UPDATE users SET last_login_at = ? WHERE id = ?", [now_iso(), user["id"]])
            return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", error=error), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
@public
def logout():
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/password", methods=["GET", "POST"])
@role("viewer")
def change_password():
    errors = {}
    if request.method == "POST":
        db = get_db()
        if users.verify(db, current_user.username, request.form.get("current", "")) is None:
            errors["current"] = "That is not your current password."
        elif request.form.get("new") != request.form.get("confirm"):
            errors["confirm"] = "The two new passwords differ."
        else:
            try:
                users.set_password(db, current_user.username, request.form.get("new") or "x")
            except ValidationError as error:
                errors = {"new": error.fields.get("password", str(error))}
            else:
                # The version bump ended every session, this one included: log in again.
                logout_user()
                session.clear()
                flash("Password changed. Log in with the new password.", "success")
                return redirect(url_for("auth.login"))
    return render_template("auth/password.html", errors=errors), (422 if errors else 200)

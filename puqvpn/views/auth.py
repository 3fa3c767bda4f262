"""Logging in and out, changing one's password, and the role check on every route.

Every endpoint is closed by default: a view is reachable only when logged in
with at least the role it declares through ``@role("viewer")`` etc. (admin
when it declares nothing).  ``@public`` opens one, as the login page and the
token-authenticated API do.
"""

import time

from flask import (Blueprint, current_app, flash, g, redirect, render_template, request,
                   session, url_for)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from ..db import get_db
from ..services import throttle, totp, users, validation
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
        g.audit_refused_role = "not logged in"
        return login_manager.unauthorized()
    if not current_user.can(needed):
        g.audit_refused_role = f"needs the {needed} role"
        return render_template("errors.html", code=403, title="Not allowed",
                               message=f"This needs the {needed} role; you are {current_user.role}."), 403
    if (current_app.config["PUQVPN"].bool("REQUIRE_2FA") and not current_user.row["totp_secret"]
            and request.endpoint not in ENROLMENT_ENDPOINTS):
        flash("Two-factor login is required on this panel: set it up to continue.", "info")
        return redirect(url_for("auth.enrol"))
    return None


# Reachable while 2FA is required but not yet set up.
ENROLMENT_ENDPOINTS = {"auth.enrol", "auth.enrol_qr", "auth.logout", "auth.change_password"}


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


SECOND_FACTOR_SECONDS = 300   # time to type the code after the password


def _finish_login(user, detail=""):
    next_url = session.pop("login_next", None)
    session.clear()   # a fresh session: nothing from before the login carries over
    session.permanent = True
    login_user(User(user))
    db = get_db()
    db.execute("UPDATE users SET last_login_at = ? WHERE id = ?", [now_iso(), user["id"]])
    throttle.success(db, request.remote_addr or "", user["username"], detail)
    return redirect(_safe_next(next_url))


def _locked_message(until):
    minutes = throttle.minutes_left(until)
    return f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


def _account_key(typed):
    """The typed username, as the throttle and the audit log know it.

    Something that cannot be a username (people do type a password there)
    is not written down; such attempts share one throttle bucket.
    """
    try:
        return validation.username(typed)
    except validation.FieldError:
        return "(not a valid username)"


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    error, status = None, 200
    if request.method == "POST":
        g.audit_done = True    # entries written here, with the typed username as the actor
        db = get_db()
        source = request.remote_addr or ""
        username = _account_key(request.form.get("username") or "")
        until = throttle.locked_until(db, source, username)
        if until:
            throttle.refused_while_locked(db, source, username)
            error, status = _locked_message(until), 429
        else:
            user = users.verify(db, username, request.form.get("password", ""))
            if user is None:
                throttle.failure(db, source, username, "password")
                error, status = "Wrong username or password.", 401
            elif user["totp_secret"]:
                session.clear()
                session["login_next"] = request.args.get("next")
                session["second_factor"] = {"id": user["id"], "version": user["session_version"],
                                            "at": int(time.time())}
                return redirect(url_for("auth.second_factor"))
            else:
                session["login_next"] = request.args.get("next")
                return _finish_login(user)
    return render_template("auth/login.html", error=error), status


@bp.route("/2fa", methods=["GET", "POST"])
@public
def second_factor():
    """Step two of a login with 2FA: a code from the app, or a recovery code."""
    pending = session.get("second_factor")
    db = get_db()
    user = users.get(db, pending["id"]) if pending else None
    if (user is None or user["session_version"] != pending["version"] or not user["totp_secret"]
            or time.time() - pending["at"] > SECOND_FACTOR_SECONDS):
        session.pop("second_factor", None)
        if request.method == "POST":
            g.audit_done = True
        flash("Log in again: the sign-in expired.", "info")
        return redirect(url_for("auth.login"))
    error, status = None, 200
    if request.method == "POST":
        g.audit_done = True
        source = request.remote_addr or ""
        until = throttle.locked_until(db, source, user["username"])
        if until:
            throttle.refused_while_locked(db, source, user["username"])
            error, status = _locked_message(until), 429
        else:
            used = totp.verify_second_factor(db, user, request.form.get("code", ""))
            if used is None:
                throttle.failure(db, source, user["username"], "code")
                error, status = "Wrong code.", 401
            else:
                if used == "recovery":
                    response = _finish_login(user, "with a recovery code")
                    left = totp.recovery_codes_left(users.get(db, user["id"]))
                    flash(f"You used a recovery code; {left} left. Make new ones under Two-factor login.",
                          "info")
                    return response
                return _finish_login(user, "with a TOTP code")
    return render_template("auth/second_factor.html", error=error), status


def qr_data_uri(text):
    """The QR code as a data: URI, part of the page itself.

    A separate image request could race a cookie written by another request
    of the same browser and find no enrolment secret in the session.
    """
    import base64
    import io

    import segno
    buffer = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buffer, kind="svg", scale=5, border=2, xmldecl=False,
                                                  svgns=True, title="Two-factor login")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@bp.route("/2fa/setup", methods=["GET", "POST"])
@role("viewer")
def enrol():
    """Set up, renew or turn off one's own TOTP."""
    db = get_db()
    user = users.get(db, current_user.row["id"])
    required = current_app.config["PUQVPN"].bool("REQUIRE_2FA")
    errors, codes = {}, None
    if request.method == "POST":
        action = request.form.get("action")
        if action == "enable" and not user["totp_secret"]:
            secret = session.get("enrol_secret")
            if secret and totp.check_code(secret, request.form.get("code", "")):
                codes = totp.enable(db, user["id"], secret)
                session.pop("enrol_secret", None)
                user = users.get(db, user["id"])
            else:
                errors["code"] = "That code does not match; check the phone's clock and try the next code."
        elif action in ("disable", "recovery") and user["totp_secret"]:
            if users.verify(db, user["username"], request.form.get("password", "")) is None:
                errors["password"] = "That is not your password."
            elif action == "disable" and required:
                errors["password"] = "Two-factor login is required on this panel and cannot be turned off."
            elif action == "disable":
                totp.disable(db, user["id"])
                flash("Two-factor login is off.", "success")
                return redirect(url_for("auth.enrol"))
            else:
                codes = totp.regenerate_recovery_codes(db, user["id"])
        else:
            errors["action"] = "Nothing to do."
    if not user["totp_secret"] and "enrol_secret" not in session:
        session["enrol_secret"] = totp.new_secret()
    secret = None if user["totp_secret"] else session["enrol_secret"]
    qr = qr_data_uri(totp.provisioning_uri(secret, user["username"])) if secret else None
    return render_template("auth/enrol.html", user=user, secret=secret, qr=qr, codes=codes, errors=errors,
                           required=required, codes_left=totp.recovery_codes_left(user)), \
        (422 if errors else 200)


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

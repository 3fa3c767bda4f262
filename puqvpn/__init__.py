"""puqvpn: a self-hosted WireGuard and IKEv2 VPN panel.

``create_app()`` is the app factory; ``create_app(DATABASE=..., SYSTEM_APPLY="0")``
overrides settings by name, as the tests do.
"""

import datetime
import os
import secrets
from importlib import import_module
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from htmx_flask import Htmx

from . import db, settings as settings_module

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
csrf = CSRFProtect()

# Blueprints in puqvpn/views/, registered in this order when present.
BLUEPRINTS = ("auth", "dashboard", "interfaces", "clients", "ikev2", "diagnostics", "backups",
              "metrics", "api", "share", "tokens", "accounts", "audit", "resolver", "portforwards")


def _secret_key(path):
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def create_app(settings=None, **overrides):
    settings = settings if settings is not None else settings_module.load(**overrides)
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"),
                instance_path=settings["INSTANCE_DIR"])
    Path(settings["INSTANCE_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = bool(settings["TLS_CERT"])
    app.config.update(
        PUQVPN=settings,
        SECRET_KEY=_secret_key(settings["SECRET_KEY_FILE"]),
        SESSION_COOKIE_NAME="puqvpn_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=tls,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SECURE=tls,
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(minutes=settings.int("SESSION_TIMEOUT_MINUTES")),
        WTF_CSRF_TIME_LIMIT=None,            # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=True,
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,  # backups are the largest upload
    )

    # Create or upgrade the schema once, at start-up.
    db.connect(settings["DATABASE"]).conn.close()
    db.init_app(app)
    csrf.init_app(app)
    Htmx(app)

    from .views import auth
    auth.init_app(app)
    for name in BLUEPRINTS:
        try:
            module = import_module(f".views.{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name == f"{__name__}.views.{name}":
                continue
            raise
        app.register_blueprint(module.bp)
        if hasattr(module, "init_app"):
            module.init_app(app)

    from .views import _common, _security
    _common.init_app(app)
    _security.init_app(app)

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        if request.path.startswith("/api/"):
            return jsonify(error="csrf", message=error.description), 400
        return render_template("errors.html", code=400, title="Form expired",
                               message="The form's security token was missing or stale. "
                                       "Reload the page and try again."), 400

    try:
        from . import cli
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.cli":
            raise
    else:
        if hasattr(cli, "register"):
            cli.register(app)
    return app

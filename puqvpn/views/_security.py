"""Security headers on every response, and the panel's source-address allow list."""

import ipaddress

from flask import abort, current_app, request

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def _allowed(address, networks):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def init_app(app):
    networks = [ipaddress.ip_network(item, strict=False)
                for item in app.config["PUQVPN"].list("ALLOWED_WEB_IPS")]

    if networks:
        @app.before_request
        def check_source():
            if not _allowed(request.remote_addr or "", networks):
                abort(403)

    @app.after_request
    def headers(response):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        # same-origin, not no-referrer: flask-wtf checks the Referer of every POST over HTTPS.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if current_app.config["PUQVPN"]["TLS_CERT"] or request.is_secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if request.endpoint != "static":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

"""The access rule of every route, and a seeded panel to try each route on.

``RULES`` is the contract the role tests hold the app to: a route that is not
listed here fails them, so nobody adds a page or an API call without saying
who may use it.

- ``public``: no login (the view checks a token of its own, if any);
- ``viewer`` / ``operator`` / ``admin``: the least panel role allowed;
- ``token:<role>``: an API call, with the least API token role allowed.

The issue's roles: admin may do everything; operator manages clients only (no
settings, tokens or keys); viewer only reads.
"""

import re

from werkzeug.routing import AnyConverter
from werkzeug.security import generate_password_hash

from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import clients, interfaces, share_links, tokens
from puqvpn.services.util import now_iso

RULES = {
    "static": "public",
    # logging in
    "auth.login": "public",
    "auth.second_factor": "public",
    "auth.logout": "public",
    "auth.enrol": "viewer",
    "auth.change_password": "viewer",
    "dashboard.index": "viewer",
    # interfaces are settings and hold the server's private key: admin only, except reading
    "interfaces.index": "viewer",
    "interfaces.show": "viewer",
    "interfaces.new": "admin",
    "interfaces.edit": "admin",
    "interfaces.enable": "admin",
    "interfaces.disable": "admin",
    "interfaces.delete": "admin",
    "interfaces.server_config": "admin",
    "interfaces.apply_all": "admin",
    # clients: operators manage them, and their profiles (the client's own key) are theirs to hand out
    "clients.index": "viewer",
    "clients.show": "viewer",
    "clients.new": "operator",
    "clients.edit": "operator",
    "clients.suspend": "operator",
    "clients.resume": "operator",
    "clients.new_password": "operator",
    "clients.delete": "operator",
    "clients.wireguard_conf": "operator",
    "clients.wireguard_qr": "operator",
    # share links: a client's profile for its owner
    "share.page": "public",
    "share.open_link": "public",
    "share.wireguard_conf": "public",
    "share.ca": "public",
    "share.ikev2_download": "public",
    "share.index": "operator",
    "share.create": "operator",
    "share.revoke": "operator",
    # tokens, accounts, the audit log: admin
    "tokens.index": "admin",
    "tokens.create": "admin",
    "tokens.revoke": "admin",
    "tokens.delete": "admin",
    "accounts.index": "admin",
    "accounts.new": "admin",
    "accounts.set_role": "admin",
    "accounts.reset_password": "admin",
    "accounts.reset_second_factor": "admin",
    "accounts.delete": "admin",
    "audit.index": "admin",
    # backups hold every key
    "backups.index": "admin",
    "backups.download": "admin",
    "backups.file": "admin",
    "backups.now": "admin",
    "backups.restore": "admin",
    # IKEv2: certificates and proposals are settings (admin); the CA certificate is public
    # anyway and goes to clients; live sessions are read by all, dropped by operators
    "ikev2.index": "admin",
    "ikev2.generate_ca": "admin",
    "ikev2.import_ca": "admin",
    "ikev2.generate_server": "admin",
    "ikev2.delete": "admin",
    "ikev2.ca_pem": "operator",
    "ikev2.ca_der": "operator",
    "ikev2.ca_key": "admin",
    "ikev2.settings_page": "admin",
    "ikev2.reset_settings": "admin",
    "ikev2.sessions": "viewer",
    "ikev2.drop": "operator",
    "ikev2.profile": "operator",
    "diagnostics.interface": "operator",
    # traffic charts are reading; /metrics has its own bearer token (METRICS_TOKEN)
    "metrics.metrics": "public",
    "metrics.client_chart": "viewer",
    "metrics.client_day_chart": "viewer",
    "metrics.client_month_chart": "viewer",
    "metrics.client_charts": "viewer",
    "metrics.interface_classes": "viewer",
    "metrics.dashboard_traffic": "viewer",
    # the DNS resolver and port forwards are server settings
    "resolver.index": "admin",
    "resolver.save": "admin",
    "resolver.connections": "admin",
    "portforwards.index": "viewer",
    "portforwards.create": "admin",
    "portforwards.delete": "admin",
    # the API, by token role
    "api.openapi": "public",
    "api.status": "token:viewer",
    "api.list_interfaces": "token:viewer",
    "api.get_interface": "token:viewer",
    "api.available_ips": "token:viewer",
    "api.create_interface": "token:admin",
    "api.update_interface": "token:admin",
    "api.delete_interface": "token:admin",
    "api.apply_default_limits": "token:operator",
    "api.list_clients": "token:viewer",
    "api.online": "token:viewer",
    "api.get_client": "token:viewer",
    "api.traffic": "token:viewer",
    "api.create_client": "token:operator",
    "api.update_client": "token:operator",
    "api.delete_client": "token:operator",
    "api.suspend_client": "token:operator",
    "api.resume_client": "token:operator",
    "api.change_password": "token:operator",
    "api.drop_sessions": "token:operator",
    "api.wireguard_conf": "token:operator",
    "api.wireguard_svg": "token:operator",
    "api.ikev2_profile_sswan": "token:operator",
    "api.ikev2_profile_mobileconfig": "token:operator",
    "api.ikev2_profile_windows": "token:operator",
    "api.ikev2_profile_nm": "token:operator",
    "api.ikev2_profile_nmconnection": "token:operator",
    "api.create_share_link": "token:operator",
    "api.list_share_links": "token:operator",
    "api.revoke_share_link": "token:operator",
    "api.list_port_forwards": "token:viewer",
    "api.create_port_forward": "token:admin",
    "api.delete_port_forward": "token:admin",
    "api.ikev2_ca_crt": "token:viewer",
    "api.ikev2_generate_ca": "token:admin",
    "api.ikev2_import_ca": "token:admin",
    "api.ikev2_server_cert": "token:admin",
}

ROLES = ("viewer", "operator", "admin")
RANK = {"viewer": 1, "operator": 2, "admin": 3}
CHANGING = ("POST", "PUT", "PATCH", "DELETE")

# Hashing a password takes a while with scrypt; the role tests log in through the session instead.
_HASH = generate_password_hash("correct horse battery", method="pbkdf2:sha256:1000")


def routes(app):
    """(endpoint, method, rule) for every route of the app, HEAD and OPTIONS aside."""
    found = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, rule))
    return found


def make_app(tmp_path, **overrides):
    settings = dict(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                    WG_CONF_DIR=str(tmp_path / "wireguard"), SWANCTL_DIR=str(tmp_path / "swanctl"),
                    BACKUP_DIR=str(tmp_path / "backups"))
    settings.update(overrides)
    app = create_app(**settings)
    app.config["TESTING"] = True
    return app


def seed(app):
    """One of everything a URL can name; returns {url argument: value} and the API tokens by role."""
    db = connect(app.config["PUQVPN"]["DATABASE"])
    try:
        ids = {}
        for name in ("admin", "operator", "viewer", "spare"):
            db.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                       [name, _HASH, "viewer" if name == "spare" else name, now_iso()])
            ids[name] = db.execute("SELECT id FROM users WHERE username = ?", [name]).fetchone()[0]
        wg0 = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                     "endpoint": "vpn.example.com", "dns": "1.1.1.1", "mtu": "1420",
                                     "keepalive": "25", "allowed_ips": "0.0.0.0/0, ::/0"})
        alice = clients.create(db, {"interface": wg0["id"], "name": "alice"})
        link = share_links.create(db, alice["id"])
        link_row = link[0] if isinstance(link, tuple) else link
        api_tokens = {role: tokens.create(db, f"test-{role}", role)[1] for role in ROLES}
        spare_token = tokens.create(db, "spare", "viewer")[0]
        values = {"interface_id": wg0["id"], "client_id": alice["id"], "user_id": ids["spare"],
                  "interface_name": "wg0", "name": "alice", "link_id": link_row["id"],
                  "token_id": spare_token["id"], "token": "not-a-real-share-token", "kind": "day", "cert": "server", "fmt": "sswan", "forward_id": 1, "ike_id": 1,
                  "filename": "app.css"}
        return values, api_tokens, ids
    finally:
        db.conn.close()


def url_for_rule(rule, values):
    missing = [arg for arg in rule.arguments if arg not in values]
    assert not missing, f"routes.seed() has no value for the URL argument(s) {missing} of {rule.rule}"
    chosen = {}
    for arg in rule.arguments:
        converter = rule._converters.get(arg)
        if isinstance(converter, AnyConverter) and values[arg] not in converter.items:
            chosen[arg] = sorted(converter.items)[0]     # <any(a, b):x> takes only its own words
        else:
            chosen[arg] = values[arg]
    return rule.build(chosen, append_unknown=False)[1]


def login_as(client, user_id):
    """A logged-in session without going through the (slow, throttled) login form."""
    with client.session_transaction() as session:
        session["_user_id"] = f"{user_id}:0"
        session["_fresh"] = True
        session.permanent = True


def csrf_token(client):
    page = client.get("/auth/login").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def is_login_redirect(response):
    return response.status_code in (301, 302, 303) and "/auth/login?next=" in response.headers.get("Location", "")

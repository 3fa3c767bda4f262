"""The JSON API under /api/v1, for billing systems and scripts.

Every request carries ``Authorization: Bearer <token>`` (see services/tokens.py);
the session cookie is never looked at, and CSRF does not apply.  Routes are
declared with ``@operation(...)``, which registers the Flask rule and the
OpenAPI operation together, so ``/api/v1/openapi.json`` always matches the
routes.  Bodies and query strings are checked against the published schemas
(services/api_schema.py) before the service layer sees them; the service
layer is the same one the pages use.

Errors are ``{"error": code, "message": text, "fields": {name: text}}``.
"""

import datetime
import functools
import logging
import time

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from .. import __version__, csrf
from ..db import get_db
from ..services import (accounting, api_schema, clients, interfaces, pki, portforwards, share_links, tokens,
                        wgconfig)
from ..services.system import CommandError
from ..services.validation import FieldError, ValidationError
from ._common import context, settings
from .auth import public

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logging.getLogger(__name__)

# Every operation as registered by @operation, in order: the OpenAPI document's source.
OPERATIONS = []


class ApiError(Exception):
    def __init__(self, status, code, message, fields=None):
        self.status, self.code, self.message, self.fields = status, code, message, fields
        super().__init__(message)


def error_response(status, code, message, fields=None):
    body = {"error": code, "message": message}
    if fields:
        body["fields"] = {str(k): str(v) for k, v in fields.items()}
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="puqvpn"'
    return response


def operation(rule, method, *, summary, tag, role="viewer", response=None, status=200, body=None,
              body_required=True, query=(), content=None, errors=(), description="", auth=True,
              response_description="OK"):
    """Register an API route and its OpenAPI operation in one go.

    ``body`` names the request schema (the view gets the checked dict as ``body``),
    ``query`` lists query parameters (the view gets their typed values as ``query``),
    ``response`` names the response schema, or ``content`` gives a non-JSON media type.
    """
    def decorate(view):
        @functools.wraps(view)
        def run(**kwargs):
            if auth and not tokens.can(g.api_token, role):
                raise ApiError(403, "forbidden", f"this needs a token with the {role} role; "
                                                 f"this one has {g.api_token['role']}")
            checked = api_schema.check_query(query, request.args)
            if query:
                kwargs["query"] = checked
            if body:
                kwargs["body"] = api_schema.check_body(body, _json_body(body_required))
            return view(**kwargs)

        run = public(run)       # no session login: the token is checked in authenticate()
        run.api_auth = auth
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=run, methods=[method])
        OPERATIONS.append({
            "rule": bp.url_prefix + rule, "method": method, "endpoint": view.__name__, "summary": summary,
            "description": description, "tag": tag, "role": role, "response": response, "status": status,
            "body": body, "body_required": body_required, "query": list(query), "content": content,
            "errors": errors, "auth": auth, "response_description": response_description,
        })
        return run
    return decorate


def _json_body(required):
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise ApiError(400, "bad_request", "this request needs a JSON body")
        return {}
    data = request.get_json(force=True, silent=True)
    if data is None and raw.strip() != b"null":
        raise ApiError(400, "bad_request", "the request body is not valid JSON")
    return data


@bp.before_request
def authenticate():
    view = current_app.view_functions.get(request.endpoint)
    if not getattr(view, "api_auth", True):
        return None
    try:
        g.api_token = tokens.authenticate(get_db(), request.headers.get("Authorization"), request.remote_addr)
    except tokens.TokenError as error:
        return error_response(error.status, error.code, str(error))
    return None


@bp.errorhandler(ApiError)
def api_error(error):
    return error_response(error.status, error.code, error.message, error.fields)


@bp.errorhandler(ValidationError)
def validation_error(error):
    fields = error.fields or {"__all__": str(error)}
    return error_response(422, "invalid", str(error) or "the request is not valid", fields)


@bp.errorhandler(FieldError)
def field_error(error):
    # A service check that ran outside a Checker, so the field is not named.
    return error_response(422, "invalid", f"a field is invalid: {error}", {"__all__": str(error)})


@bp.errorhandler(HTTPException)
def http_error(error):
    return _http_error_json(error)


def _http_error_json(error):
    code = (error.name or "error").lower().replace(" ", "_").replace("'", "")
    return error_response(error.code or 500, code, error.description or error.name)


# ------------------------------------------------------------------ helpers

def _now():
    return int(time.time())


def _stamp(unix):
    if not unix:
        return None
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _interface_by_name(name):
    row = next(get_db().query("SELECT * FROM interfaces WHERE name = ?", [name]), None)
    if row is None:
        raise ApiError(404, "not_found", f"no interface named {name}")
    return row


def _client_by_name(name):
    row = clients.get(get_db(), str(name))
    if row is None:
        raise ApiError(404, "not_found", f"no client named {name}")
    return row


def _apply(action, *args):
    """Push a committed change live.  A failure keeps the change and marks it pending (shown as ``pending``)."""
    if not settings().bool("SYSTEM_APPLY"):
        return
    from ..services import apply
    try:
        getattr(apply, action)(context(), *args)
    except apply.ApplyError as error:
        log.warning("API change saved but not live yet: %s", error)


def interface_json(row):
    db = get_db()
    counts = next(db.query("SELECT count(*) AS total, sum(suspended_reason IS NULL) AS active "
                           "FROM clients WHERE interface_id = ?", [row["id"]]))
    return {
        "id": row["id"], "name": row["name"], "label": row["label"], "address": row["address"],
        "address6": row["address6"] or None, "listen_port": row["listen_port"], "endpoint": row["endpoint"],
        "ext_device": row["ext_device"], "nat": bool(row["nat"]), "client_to_client": bool(row["client_to_client"]),
        "dns": row["dns"], "mtu": row["mtu"], "keepalive": row["keepalive"], "allowed_ips": row["allowed_ips"],
        "default_download_mbit": row["default_down_mbit"], "default_upload_mbit": row["default_up_mbit"],
        "ikev2_enabled": bool(row["ikev2_enabled"]), "conn_logging": bool(row["conn_logging"]),
        "enabled": bool(row["enabled"]), "public_key": row["public_key"], "apply_error": row["apply_error"],
        "client_count": counts["total"] or 0, "active_count": counts["active"] or 0,
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }


def client_json(row, interface=None, password=False):
    interface = interface or interfaces.get(get_db(), row["interface_id"])
    data = {
        "id": row["id"], "name": row["name"], "interface": interface["name"], "ip": row["ip"], "ip6": row["ip6"],
        "public_key": row["public_key"], "username": row["username"],
        "download_mbit": row["down_mbit"], "upload_mbit": row["up_mbit"], "expires_at": row["expires_at"],
        "quota_gb": row["quota_gb"], "quota_reset_day": row["quota_reset_day"], "note": row["note"],
        "status": clients.status(row, _now(), settings().int("ONLINE_TIMEOUT")),
        "suspended_reason": row["suspended_reason"], "suspended_at": row["suspended_at"],
        "rx_bytes": row["rx_bytes"], "tx_bytes": row["tx_bytes"],
        "period_rx_bytes": row["period_rx_bytes"], "period_tx_bytes": row["period_tx_bytes"],
        "period_start": row["period_start"], "last_handshake": _stamp(row["last_handshake"]),
        "endpoint": row["endpoint"], "has_profile": bool(row["private_key"]),
        "pending": interface["apply_error"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
    }
    if password:
        data["password"] = row["password"]
    return data


MAX_ID = 2 ** 63 - 1      # SQLite's largest integer

# API field names -> database columns, where they differ.
CLIENT_COLUMNS = {"download_mbit": "down_mbit", "upload_mbit": "up_mbit"}
INTERFACE_COLUMNS = {"default_download_mbit": "default_down_mbit", "default_upload_mbit": "default_up_mbit"}


def _to_columns(body, mapping):
    return {mapping.get(key, key): ("" if value is None else value) for key, value in body.items()}


def _from_columns(error, mapping):
    """A ValidationError with database column names -> one with the API's field names."""
    back = {column: field for field, column in mapping.items()}
    return ValidationError({back.get(name, name): text for name, text in error.fields.items()})


def _reserved_ports():
    from .interfaces import reserved_ports
    return reserved_ports()


def _base_url():
    return (settings().get("PUBLIC_URL") or request.host_url).rstrip("/")


# ------------------------------------------------------------------ status

@operation("/openapi.json", "GET", summary="This API's OpenAPI 3.1 document", tag="meta", auth=False,
           response="OpenApiDocument")
def openapi():
    return jsonify(document())


def document():
    return api_schema.document(OPERATIONS, __version__, server_url="/")


@operation("/status", "GET", summary="Version, backends, service states and counts", tag="status",
           response="Status")
def status():
    from . import status_panels
    db = get_db()
    ctx = context()
    wg_backend, ipsec_backend = settings()["WG_BACKEND"], settings()["IPSEC_BACKEND"]
    if ctx.live:
        # Detected on the live system; off it (SYSTEM_APPLY=0) the settings say what would be used.
        from ..services import strongswan, wireguard
        try:
            wg_backend = wireguard.backend(ctx)
        except (CommandError, RuntimeError) as error:
            wg_backend = f"unknown ({error})"
        try:
            ipsec_backend = strongswan.ipsec_backend(ctx)
        except (CommandError, RuntimeError, OSError) as error:
            ipsec_backend = f"unknown ({error})"
    counts = clients.counts(db, _now(), settings().int("ONLINE_TIMEOUT"))
    counts["interfaces"] = next(db.query("SELECT count(*) AS n FROM interfaces"))["n"]
    services = [{"title": p["title"], "state": p.get("state", ""), "detail": str(p.get("detail", ""))}
                for p in status_panels.collect(ctx)]
    return jsonify(version=__version__, backends={"wireguard": str(wg_backend), "ipsec": str(ipsec_backend)},
                   services=services, counts={k: int(v or 0) for k, v in counts.items()})


# ------------------------------------------------------------------ interfaces

@operation("/interfaces", "GET", summary="List interfaces", tag="interfaces", response="InterfaceList")
def list_interfaces():
    return jsonify(interfaces=[interface_json(row) for row in interfaces.list_all(get_db())])


@operation("/interfaces", "POST", summary="Create an interface", tag="interfaces", role="admin",
           body="InterfaceCreate", response="Interface", status=201)
def create_interface(body):
    db = get_db()
    data = _to_columns(body, INTERFACE_COLUMNS)
    data.setdefault("listen_port", interfaces.next_free_port(db))
    try:
        row = interfaces.create(db, data, _reserved_ports())
    except ValidationError as error:
        raise _from_columns(error, INTERFACE_COLUMNS) from None
    _apply("interface_changed", row["id"])
    return jsonify(interface_json(interfaces.get(db, row["id"]))), 201


@operation("/interfaces/<interface_name>", "GET", summary="Get an interface", tag="interfaces",
           response="Interface")
def get_interface(interface_name):
    return jsonify(interface_json(_interface_by_name(interface_name)))


@operation("/interfaces/<interface_name>", "PATCH", summary="Change an interface", tag="interfaces", role="admin",
           body="InterfaceUpdate", response="Interface",
           description="Only the fields given change. `{\"ikev2_enabled\": true}` turns IKEv2 on.")
def update_interface(interface_name, body):
    row = _interface_by_name(interface_name)
    try:
        interfaces.update(get_db(), row["id"], _to_columns(body, INTERFACE_COLUMNS), _reserved_ports())
    except ValidationError as error:
        raise _from_columns(error, INTERFACE_COLUMNS) from None
    _apply("interface_changed", row["id"])
    return jsonify(interface_json(interfaces.get(get_db(), row["id"])))


@operation("/interfaces/<interface_name>", "DELETE", summary="Delete an interface", tag="interfaces", role="admin",
           status=204, response_description="Deleted.", errors=(409,),
           query=[api_schema.query_param("force", {"type": "string", "enum": ["true", "false"]},
                                         description="needed to delete an interface that still has clients")],
           description="An interface with clients is deleted (with them) only with `?force=true`.")
def delete_interface(interface_name, query):
    row = _interface_by_name(interface_name)
    count = next(get_db().query("SELECT count(*) AS n FROM clients WHERE interface_id = ?", [row["id"]]))["n"]
    if count and query.get("force") != "true":
        raise ApiError(409, "has_clients", f"{interface_name} has {count} client(s); "
                                           "add ?force=true to delete them with it")
    removed = interfaces.delete(get_db(), row["id"])
    _apply("interface_removed", removed)
    return "", 204


@operation("/interfaces/<interface_name>/apply-default-limits", "POST", tag="interfaces", role="operator",
           summary="Put every client of the interface on its default limits", response="DefaultLimitsApplied")
def apply_default_limits(interface_name):
    row = _interface_by_name(interface_name)
    from ..services import shaping
    db = get_db()
    before = next(db.query("SELECT count(*) AS n FROM clients WHERE interface_id = ? "
                           "AND (down_mbit != 0 OR up_mbit != 0)", [row["id"]]))["n"]
    try:
        changed = shaping.apply_interface_default(context(), row["id"])
    except CommandError as error:
        # The database change is committed before the live one: keep it, mark it pending.
        interfaces.set_apply_error(db, row["id"], f"shaping: {error}")
        changed = before
    return jsonify(interface=row["name"], changed=changed)


@operation("/interfaces/<interface_name>/available-ips", "GET", tag="interfaces", role="viewer",
           summary="The lowest free client addresses", response="AvailableIps",
           query=[api_schema.query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1024, "default": 10})])
def available_ips(interface_name, query):
    row = _interface_by_name(interface_name)
    return jsonify(interface=row["name"], addresses=clients.free_ips(get_db(), row, query.get("limit", 10)))


def forward_json(row, interface_name):
    client = clients.get(get_db(), row["client_id"])
    return {"id": row["id"], "interface": interface_name, "client": client["name"], "proto": row["proto"],
            "ext_port": row["ext_port"], "dest_port": row["dest_port"]}


@operation("/interfaces/<interface_name>/port-forwards", "GET", summary="List the interface's port forwards",
           tag="interfaces", response="PortForwardList")
def list_port_forwards(interface_name):
    row = _interface_by_name(interface_name)
    return jsonify(port_forwards=[forward_json(f, row["name"])
                                  for f in portforwards.list_for_interface(get_db(), row["id"])])


@operation("/interfaces/<interface_name>/port-forwards", "POST", summary="Forward a server port to a client",
           tag="interfaces", role="admin", body="PortForwardCreate", response="PortForward", status=201,
           description="The server's own ports (SSH, DNS, the panel, WireGuard, IKE) are refused.")
def create_port_forward(interface_name, body):
    row = _interface_by_name(interface_name)
    client = next(get_db().query("SELECT id FROM clients WHERE name = ? AND interface_id = ?",
                                 [body["client"], row["id"]]), None)
    data = {"client_id": str(client["id"]) if client else "", "proto": body["proto"],
            "ext_port": body["ext_port"], "dest_port": body.get("dest_port")}
    try:
        forward = portforwards.create(get_db(), row["id"], data, settings().int("PORT"))
    except ValidationError as error:
        raise ValidationError({"client" if k == "client_id" else k: v for k, v in error.fields.items()}) from None
    _apply("interface_changed", row["id"])
    return jsonify(forward_json(forward, row["name"])), 201


@operation("/interfaces/<interface_name>/port-forwards/<int:forward_id>", "DELETE", summary="Remove a port forward",
           tag="interfaces", role="admin", status=204, response_description="Removed.")
def delete_port_forward(interface_name, forward_id):
    row = _interface_by_name(interface_name)
    forward = portforwards.get(get_db(), forward_id) if forward_id <= MAX_ID else None
    if forward is None or forward["interface_id"] != row["id"]:
        raise ApiError(404, "not_found", f"no port forward {forward_id} on {interface_name}")
    portforwards.delete(get_db(), forward_id)
    _apply("interface_changed", row["id"])
    return "", 204


# ------------------------------------------------------------------ clients

@operation("/clients", "GET", summary="List clients, filtered and paged", tag="clients", response="ClientList",
           query=[
               api_schema.query_param("interface", {"type": "string", "maxLength": 20}, description="interface name"),
               api_schema.query_param("status", {"type": "string", "enum": [*api_schema.CLIENT_STATUSES, ""]},
                                      description="empty: any status"),
               api_schema.query_param("q", {"type": "string", "maxLength": 100},
                                      description="part of the name, address, username or note"),
               api_schema.query_param("page", {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 1}),
               api_schema.query_param("per_page", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
           ])
def list_clients(query):
    db = get_db()
    interface_id = None
    if query.get("interface"):
        row = next(db.query("SELECT id FROM interfaces WHERE name = ?", [query["interface"]]), None)
        if row is None:
            raise ValidationError({"interface": f"no interface named {query['interface']}"})
        interface_id = row["id"]
    page, per_page = query.get("page", 1), query.get("per_page", 50)
    rows, total = clients.search(db, interface_id=interface_id, q=query.get("q", ""), status=query.get("status"),
                                 page=page, per_page=per_page, now=_now(),
                                 online_timeout=settings().int("ONLINE_TIMEOUT"))
    cache = {}
    result = []
    for row in rows:
        if row["interface_id"] not in cache:
            cache[row["interface_id"]] = interfaces.get(db, row["interface_id"])
        result.append(client_json(row, cache[row["interface_id"]]))
    return jsonify(clients=result, total=total, page=page, per_page=per_page)


@operation("/clients", "POST", summary="Create a client", tag="clients", role="operator", body="ClientCreate",
           response="ClientWithPassword", status=201,
           description="The response holds the IKEv2 password (generated unless given): it is not shown again.")
def create_client(body):
    db = get_db()
    try:
        row = clients.create(db, _to_columns(body, CLIENT_COLUMNS))
    except ValidationError as error:
        raise _from_columns(error, CLIENT_COLUMNS) from None
    _apply("client_changed", row["id"])
    return jsonify(client_json(clients.get(db, row["id"]), password=True)), 201


@operation("/clients/online", "GET", summary="Who is online, by which protocol, from where", tag="clients",
           response="Online")
def online():
    db = get_db()
    timeout = settings().int("ONLINE_TIMEOUT")
    now = _now()
    rows = db.query("SELECT c.*, i.name AS interface_name FROM clients c JOIN interfaces i ON i.id = c.interface_id "
                    "WHERE c.suspended_reason IS NULL AND c.last_handshake > ? ORDER BY c.name", [now - timeout])
    found = [{"name": row["name"], "interface": row["interface_name"], "protocol": "wireguard",
              "remote": row["endpoint"], "since": None, "last_handshake": _stamp(row["last_handshake"])}
             for row in rows if accounting.is_online(row, now, timeout)]
    found += _ikev2_online()
    return jsonify(clients=found)


def _ikev2_online():
    """Established IKEv2 sessions, from charon, where any interface has IKEv2 on."""
    db = get_db()
    if not settings().bool("SYSTEM_APPLY") or not next(
            db.query("SELECT 1 FROM interfaces WHERE ikev2_enabled = 1 LIMIT 1"), None):
        return []
    from ..services import strongswan
    try:
        sessions = strongswan.list_sessions(context())
    except strongswan.StrongswanError as error:   # charon down: WireGuard's list still answers
        log.warning("IKEv2 sessions unavailable: %s", error)
        return []
    found = []
    for sa in sessions:
        row = next(db.query("SELECT c.name, i.name AS interface FROM clients c JOIN interfaces i "
                            "ON i.id = c.interface_id WHERE c.id = ?", [sa["client_id"]]), None)
        if row is None:
            continue      # the probe connection, or a client deleted a moment ago
        found.append({"name": row["name"], "interface": row["interface"], "protocol": "ikev2",
                      "remote": f"{sa['remote_addr']}:{sa['remote_port']}", "since": _stamp(sa["connected_since"]),
                      "last_handshake": None})
    return found


@operation("/clients/<name>", "GET", summary="Get a client", tag="clients", response="Client")
def get_client(name):
    return jsonify(client_json(_client_by_name(name)))


@operation("/clients/<name>", "PATCH", summary="Change a client (limits, quota, expiry, note, ...)", tag="clients",
           role="operator", body="ClientUpdate", response="Client",
           description="Only the fields given change; `null` clears `expires_at`.")
def update_client(name, body):
    row = _client_by_name(name)
    try:
        _old, new = clients.update(get_db(), row["id"], _to_columns(body, CLIENT_COLUMNS))
    except ValidationError as error:
        raise _from_columns(error, CLIENT_COLUMNS) from None
    _apply("client_changed", row["id"])
    return jsonify(client_json(clients.get(get_db(), new["id"])))


@operation("/clients/<name>", "DELETE", summary="Delete (terminate) a client", tag="clients", role="operator",
           status=204, response_description="Deleted.")
def delete_client(name):
    row = _client_by_name(name)
    removed = clients.delete(get_db(), row["id"])
    _apply("client_removed", removed)
    return "", 204


@operation("/clients/<name>/suspend", "POST", summary="Suspend a client: its tunnels are cut off", tag="clients",
           role="operator", response="Client")
def suspend_client(name):
    row = _client_by_name(name)
    clients.suspend(get_db(), row["id"], "admin")
    _apply("client_changed", row["id"])
    return jsonify(client_json(clients.get(get_db(), row["id"])))


@operation("/clients/<name>/resume", "POST", summary="Resume a suspended client", tag="clients", role="operator",
           body="Resume", body_required=False, response="Client",
           description="A client suspended because it expired needs `expires_at`: a new date, or null for none. "
                       "One suspended for its quota starts a new quota period.")
def resume_client(name, body):
    row = _client_by_name(name)
    expires = None
    if "expires_at" in body:
        expires = body["expires_at"] or ""
    try:
        clients.resume(get_db(), row["id"], expires)
    except FieldError as error:
        raise ValidationError({"expires_at": str(error)}) from None
    _apply("client_changed", row["id"])
    return jsonify(client_json(clients.get(get_db(), row["id"])))


@operation("/clients/<name>/password", "POST", summary="Set or generate a new IKEv2 password", tag="clients",
           role="operator", body="PasswordChange", body_required=False, response="Password",
           description="Returns the new password; omit `password` to have one generated.")
def change_password(name, body):
    row = _client_by_name(name)
    try:
        password = clients.set_password(get_db(), row["id"], body.get("password") or None)
    except FieldError as error:
        raise ValidationError({"password": str(error)}) from None
    _apply("client_changed", row["id"])
    return jsonify(name=row["name"], password=password)


@operation("/clients/<name>/sessions", "DELETE", summary="Drop the client's live connections", tag="clients",
           role="operator", response="SessionsDropped", errors=(503,),
           description="WireGuard: the peer's session keys are discarded, so it must handshake again. "
                       "IKEv2: its IKE SAs are terminated.  A suspended client has no live connections.")
def drop_sessions(name):
    row = _client_by_name(name)
    interface = interfaces.get(get_db(), row["interface_id"])
    dropped = []
    if settings().bool("SYSTEM_APPLY") and row["suspended_reason"] is None and interface["enabled"]:
        ctx = context()
        from ..services import wireguard
        try:
            # Removing and re-adding the peer throws away its session; the DB row is unchanged.
            wireguard.remove_peer(ctx, interface, row["public_key"])
            wireguard.set_peer(ctx, interface, row)
            dropped.append("wireguard")
        except (CommandError, RuntimeError) as error:
            raise ApiError(503, "unavailable", f"could not reset the WireGuard peer: {error}") from None
        if interface["ikev2_enabled"]:
            from ..services import strongswan
            try:
                if strongswan.terminate_client(ctx, row):
                    dropped.append("ikev2")
            except strongswan.StrongswanError as error:
                raise ApiError(503, "unavailable", f"could not end the IKEv2 sessions: {error}") from None
    return jsonify(name=row["name"], dropped=dropped)


# ------------------------------------------------------------------ profiles

def _wireguard_config(name):
    row = _client_by_name(name)
    if not row["private_key"]:
        raise ApiError(409, "no_profile", "this client was imported without its private key, "
                                          "so its profile cannot be rebuilt")
    interface = interfaces.get(get_db(), row["interface_id"])
    return row, interface, clients.wireguard_profile(get_db(), interface, row)


@operation("/clients/<name>/wireguard.conf", "GET", summary="The client's WireGuard .conf", tag="profiles",
           role="operator", content="text/plain", errors=(409,))
def wireguard_conf(name):
    row, interface, text = _wireguard_config(name)
    filename = wgconfig.client_config_filename(interface, row)
    return Response(text, mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@operation("/clients/<name>/wireguard.svg", "GET", summary="The client's WireGuard profile as a QR code",
           tag="profiles", role="operator", content="image/svg+xml", errors=(409,))
def wireguard_svg(name):
    from .clients import qr_svg
    _row, _interface, text = _wireguard_config(name)
    return Response(qr_svg(text), mimetype="image/svg+xml")


# kind (as services/profiles.py names it) -> (path suffix, media type).
IKEV2_PROFILES = {
    "sswan": ("ikev2.sswan", "application/vnd.strongswan.profile"),
    "mobileconfig": ("ikev2.mobileconfig", "application/x-apple-aspen-config"),
    "windows": ("ikev2-windows.ps1", "text/plain"),
    "nmconnection": ("ikev2-nm.nmconnection", "text/plain"),
}


def ikev2_profile(db, client, interface, kind):
    """(filename, media type, bytes) of a client's IKEv2 profile, or ApiError 409 saying why not.

    Shared with the share page.
    """
    if not interface["ikev2_enabled"]:
        raise ApiError(409, "ikev2_disabled", f"IKEv2 is not enabled on {interface['name']}; "
                                              "this client can only use WireGuard")
    from ..services import profiles, strongswan
    try:
        return profiles.build(db, kind, interface, client, strongswan.get_options(db))
    except profiles.ProfileError as error:
        raise ApiError(409, "ikev2_not_ready", str(error)) from None


def _ikev2_route(kind):
    def view(name):
        row = _client_by_name(name)
        interface = interfaces.get(get_db(), row["interface_id"])
        filename, media, body = ikev2_profile(get_db(), row, interface, kind)
        return Response(body, mimetype=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return view


for _kind, (_suffix, _media) in IKEV2_PROFILES.items():
    _view = _ikev2_route(_kind)
    _view.__name__ = f"ikev2_profile_{_kind}"
    operation(f"/clients/<name>/{_suffix}", "GET", summary=f"The client's IKEv2 profile ({_suffix})",
              tag="profiles", role="operator", content=_media, errors=(409,),
              description="409 where the client's interface has no IKEv2, or IKEv2 lacks its certificates.")(_view)


# ------------------------------------------------------------------ usage

@operation("/clients/<name>/traffic", "GET", summary="Bytes moved per day, hour or month", tag="usage",
           response="Traffic",
           query=[
               api_schema.query_param("from", {"type": "string", "format": "date"},
                                      description="first day, YYYY-MM-DD (default: 30 days before `to`)"),
               api_schema.query_param("to", {"type": "string", "format": "date"},
                                      description="last day, YYYY-MM-DD (default: today, UTC)"),
               api_schema.query_param("granularity", {"type": "string", "enum": ["day", "hour", "month"],
                                                      "default": "day"}),
           ],
           description="`rx_bytes` is what the server received from the client (its upload), "
                       "`tx_bytes` what it sent (its download).")
def traffic(name, query):
    row = _client_by_name(name)
    errors = {}
    days = {}
    for key in ("from", "to"):
        if key in query:
            try:
                days[key] = datetime.date.fromisoformat(query[key])
            except ValueError:
                errors[key] = "not a real date"
    if errors:
        raise ValidationError(errors)
    end = days.get("to") or datetime.datetime.now(datetime.timezone.utc).date()
    start = days.get("from") or end - datetime.timedelta(days=30)
    granularity = query.get("granularity", "day")
    if end < start:
        raise ValidationError({"from": "the start date is after the end date"})
    # Refuse huge ranges before any list of periods is built.
    days = (end - start).days + 1
    points = {"hour": days * 24, "day": days,
              "month": (end.year - start.year) * 12 + end.month - start.month + 1}[granularity]
    if points > accounting.MAX_POINTS[granularity]:
        raise ValidationError({"from": f"at most {accounting.MAX_POINTS[granularity]} {granularity}s per request"})
    try:
        rows = accounting.traffic(get_db(), row["id"], start, end, granularity)
    except ValueError as error:
        raise ValidationError({"from": str(error)}) from None
    result = [{"period": r["period"], "rx_bytes": r["rx"], "tx_bytes": r["tx"]} for r in rows]
    return jsonify(name=row["name"], **{"from": start.isoformat(), "to": end.isoformat()}, granularity=granularity,
                   rows=result, total={"rx_bytes": sum(r["rx_bytes"] for r in result),
                                       "tx_bytes": sum(r["tx_bytes"] for r in result)})


# ------------------------------------------------------------------ share links

def link_json(row, client_name=None):
    return {"id": row["id"], "client": client_name or row.get("client_name"), "created_at": row["created_at"],
            "expires_at": row["expires_at"], "max_uses": row["max_uses"], "uses": row["uses"],
            "state": share_links.state(row), "revoked_at": row["revoked_at"]}


def share_url(token):
    return _base_url() + url_for("share.page", token=token)


@operation("/clients/<name>/share-links", "POST", summary="Create a one-time share link for the client",
           tag="share links", role="operator", body="ShareLinkCreate", body_required=False,
           response="ShareLinkCreated", status=201,
           description="The URL is shown only in this response.  The public page needs no login.")
def create_share_link(name, body):
    row = _client_by_name(name)
    link, token = share_links.create(get_db(), row["id"], body.get("expires_in_hours"), body.get("max_uses"))
    return jsonify(dict(link_json(link, row["name"]), url=share_url(token))), 201


@operation("/share-links", "GET", summary="List share links", tag="share links", role="operator",
           response="ShareLinkList",
           query=[api_schema.query_param("client", {"type": "string", "maxLength": 63}, description="client name"),
                  api_schema.query_param("active", {"type": "string", "enum": ["true", "false", ""]},
                                         description="true: only links that still work; false or empty: all")])
def list_share_links(query):
    client_id = None
    if query.get("client"):
        row = clients.get(get_db(), query["client"])
        if row is None:
            raise ValidationError({"client": f"no client named {query['client']}"})
        client_id = row["id"]
    rows = share_links.list_links(get_db(), client_id=client_id, active_only=query.get("active") == "true")
    return jsonify(links=[link_json(row) for row in rows])


@operation("/share-links/<int:link_id>", "DELETE", summary="Revoke a share link", tag="share links",
           role="operator", response="ShareLink")
def revoke_share_link(link_id):
    row = share_links.revoke(get_db(), link_id) if link_id <= MAX_ID else None
    if row is None:
        raise ApiError(404, "not_found", f"no share link with id {link_id}")
    name = clients.get(get_db(), row["client_id"])["name"]
    return jsonify(link_json(row, name))


# ------------------------------------------------------------------ IKEv2 certificates

def cert_json(kind, row):
    return dict(pki.cert_info(row["cert_pem"]), kind=kind, certificate_pem=row["cert_pem"])


def _certificates_changed():
    # Every IKEv2 interface presents the server certificate: push it to each.
    for row in get_db().query("SELECT id FROM interfaces WHERE ikev2_enabled = 1"):
        _apply("interface_changed", row["id"])


@operation("/ikev2/ca.crt", "GET", summary="The IKEv2 root CA certificate (PEM)", tag="ikev2",
           content="application/x-x509-ca-cert", errors=(404,),
           description="Devices import this to trust the server certificate.")
def ikev2_ca_crt():
    row = pki.get(get_db(), "ca")
    if row is None:
        raise ApiError(404, "not_found", "there is no IKEv2 CA yet: create one with POST /api/v1/ikev2/ca")
    return Response(row["cert_pem"], mimetype="application/x-x509-ca-cert",
                    headers={"Content-Disposition": 'attachment; filename="puqvpn-ca.crt"'})


def _guard_replace(pki, replace):
    if pki.get(get_db(), "ca") is not None and not replace:
        raise ApiError(409, "exists", "an IKEv2 CA exists already; replacing it means every device must import "
                                      "the new one: send \"replace\": true to do so")


@operation("/ikev2/ca", "POST", summary="Generate the IKEv2 root CA", tag="ikev2", role="admin",
           body="CaGenerate", body_required=False, response="Certificate", status=201, errors=(409,),
           description="A new CA drops a server certificate it did not sign.")
def ikev2_generate_ca(body):
    _guard_replace(pki, body.get("replace"))
    row = pki.generate_ca(get_db(), body.get("common_name") or "puqvpn Root CA",
                          body.get("organization") or "puqvpn", body.get("country"), body.get("state"),
                          body.get("locality"), body.get("unit"), body.get("key_type") or "rsa3072")
    _certificates_changed()
    return jsonify(cert_json("ca", row)), 201


@operation("/ikev2/ca", "PUT", summary="Import an IKEv2 root CA (certificate and key, PEM)", tag="ikev2",
           role="admin", body="CaImport", response="Certificate", errors=(409,))
def ikev2_import_ca(body):
    _guard_replace(pki, body.get("replace"))
    row = pki.import_ca(get_db(), body["certificate_pem"], body["key_pem"])
    _certificates_changed()
    return jsonify(cert_json("ca", row))


@operation("/ikev2/server-cert", "POST", summary="Issue the IKEv2 server certificate from the CA", tag="ikev2",
           role="admin", body="ServerCertCreate", response="Certificate", status=201, errors=(409,))
def ikev2_server_cert(body):
    if pki.get(get_db(), "ca") is None:
        raise ApiError(409, "no_ca", "create or import the IKEv2 CA first")
    row = pki.generate_server(get_db(), body["domain"], body["ipv4"], body.get("ipv6"))
    _certificates_changed()
    return jsonify(cert_json("server", row)), 201


# ------------------------------------------------------------------ wiring

def init_app(app):
    # Bearer tokens, not cookies: a cross-site form cannot send the header, so CSRF does not apply.
    csrf.exempt(bp)

    # Unrouted /api/ paths, wrong methods and crashes answer in JSON too (a blueprint's own
    # handlers only see requests that reached one of its views).
    def json_for_api(default):
        def handle(error):
            if request.path.startswith("/api/"):
                if isinstance(error, HTTPException) and error.code != 500:
                    return _http_error_json(error)
                log.error("API error on %s %s", request.method, request.path,
                          exc_info=getattr(error, "original_exception", error))
                return error_response(500, "internal_error", "the server failed to handle this request; "
                                                             "this is a bug, please report it")
            return default(error) if default else error
        return handle

    for code in (404, 405, 500):
        previous = app.error_handler_spec.get(None, {}).get(code, {})
        default = next(iter(previous.values()), None)
        app.register_error_handler(code, json_for_api(default))

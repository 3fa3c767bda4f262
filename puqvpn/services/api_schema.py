"""The HTTP API's data shapes, the checks request bodies must pass, and the OpenAPI 3.1 document.

One description serves three purposes so they cannot disagree: the API
checks each JSON body and query string against these schemas before the
service layer sees it, ``document()`` publishes them at
``/api/v1/openapi.json``, and the test suite fuzzes the API against that
document.  The routes themselves register their operations (see
``puqvpn/views/api.py``), so the document is built from the routes.
"""

import re

from .validation import ValidationError

NULLABLE_STRING = {"type": ["string", "null"]}
DATE = {"type": ["string", "null"], "format": "date", "description": "YYYY-MM-DD (UTC); null for none"}
STAMP = {"type": "string", "description": "UTC time, YYYY-MM-DDTHH:MM:SSZ"}
NULLABLE_STAMP = {"type": ["string", "null"], "description": "UTC time, YYYY-MM-DDTHH:MM:SSZ, or null"}
MBIT = {"type": "number", "minimum": 0, "maximum": 100000,
        "description": "Mbit/s; 0 = the interface default (clients) or unlimited (interfaces)"}
CLIENT_NAME = {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$"}
INTERFACE_NAME = {"type": "string", "pattern": r"^wg[0-9]{1,5}$"}

CLIENT_STATUSES = ["active", "suspended", "expired", "quota", "online", "offline"]


def obj(properties, required=(), additional=False, description=None):
    schema = {"type": "object", "properties": properties, "additionalProperties": additional}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


_INTERFACE_WRITABLE = {
    "label": {"type": "string", "maxLength": 64},
    "address": {"type": "string", "description": "gateway address with the pool's prefix, e.g. 10.8.0.1/24"},
    "address6": {"type": ["string", "null"], "description": "IPv6 gateway with prefix, e.g. fd42:42::1/64"},
    "listen_port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "endpoint": {"type": "string", "description": "host name or address clients dial"},
    "ext_device": {"type": "string", "maxLength": 15, "description": "NAT out of this device; empty = default route"},
    "nat": {"type": "boolean"},
    "client_to_client": {"type": "boolean"},
    "dns": {"type": "string", "description": "comma-separated resolvers pushed to clients"},
    "mtu": {"type": "integer", "minimum": 1280, "maximum": 1500},
    "keepalive": {"type": "integer", "minimum": 0, "maximum": 3600},
    "allowed_ips": {"type": "string", "description": "networks routed through the tunnel, e.g. 0.0.0.0/0, ::/0"},
    "default_download_mbit": MBIT,
    "default_upload_mbit": MBIT,
    "ikev2_enabled": {"type": "boolean"},
    "conn_logging": {"type": "boolean"},
    "enabled": {"type": "boolean"},
}

_CLIENT_WRITABLE = {
    "name": CLIENT_NAME,
    "ip": {"type": "string", "description": "IPv4 address in the pool; default: the lowest free one"},
    "ip6": {"type": ["string", "null"], "description": "IPv6 address; default: the IPv4 address's twin"},
    "download_mbit": MBIT,
    "upload_mbit": MBIT,
    "expires_at": DATE,
    "quota_gb": {"type": "number", "minimum": 0, "maximum": 1000000, "description": "monthly quota, 0 = none"},
    "quota_reset_day": {"type": "integer", "minimum": 1, "maximum": 28},
    "username": {"type": "string", "maxLength": 64, "description": "IKEv2 (EAP) identity; default: the name"},
    "password": {"type": "string", "minLength": 8, "maxLength": 128,
                 "description": "IKEv2 password; default: generated and returned once"},
    "note": {"type": "string", "maxLength": 2000},
}

_CLIENT = {
    "id": {"type": "integer"},
    "name": {"type": "string"},
    "interface": {"type": "string"},
    "ip": {"type": "string"},
    "ip6": NULLABLE_STRING,
    "public_key": {"type": "string"},
    "username": {"type": "string"},
    "download_mbit": {"type": "number"},
    "upload_mbit": {"type": "number"},
    "expires_at": DATE,
    "quota_gb": {"type": "number"},
    "quota_reset_day": {"type": "integer"},
    "note": {"type": "string"},
    "status": {"type": "string", "enum": ["online", "offline", "suspended", "expired", "quota"]},
    "suspended_reason": {"type": ["string", "null"], "enum": [None, "admin", "expired", "quota"]},
    "suspended_at": NULLABLE_STAMP,
    "rx_bytes": {"type": "integer", "description": "lifetime bytes received from the client (its upload)"},
    "tx_bytes": {"type": "integer", "description": "lifetime bytes sent to the client (its download)"},
    "period_rx_bytes": {"type": "integer", "description": "received since period_start, counted for the quota"},
    "period_tx_bytes": {"type": "integer", "description": "sent since period_start, counted for the quota"},
    "period_start": DATE,
    "last_handshake": NULLABLE_STAMP,
    "endpoint": {"type": ["string", "null"], "description": "the client's address:port as last seen"},
    "has_profile": {"type": "boolean", "description": "false for peers imported without their private key"},
    "pending": {"type": ["string", "null"],
                "description": "why the last change is not live yet (it will be retried), or null"},
    "created_at": STAMP,
    "updated_at": STAMP,
}

_LINK = {
    "id": {"type": "integer"},
    "client": {"type": "string"},
    "created_at": STAMP,
    "expires_at": STAMP,
    "max_uses": {"type": "integer"},
    "uses": {"type": "integer"},
    "state": {"type": "string", "enum": ["active", "revoked", "expired", "used_up"]},
    "revoked_at": NULLABLE_STAMP,
}

_CERT = {
    "kind": {"type": "string", "enum": ["ca", "server"]},
    "subject": {"type": "string"},
    "issuer": {"type": "string"},
    "common_name": {"type": "string"},
    "san_dns": {"type": "array", "items": {"type": "string"}},
    "san_ips": {"type": "array", "items": {"type": "string"}},
    "eku": {"type": "array", "items": {"type": "string"}},
    "key": {"type": "string", "description": "key type, e.g. RSA 3072"},
    "serial": {"type": "string"},
    "not_before": {"type": "string"},
    "not_after": {"type": "string"},
    "expired": {"type": "boolean"},
    "sha256": {"type": "string", "description": "SHA-256 fingerprint, colon-separated hex"},
    "certificate_pem": {"type": "string"},
}

SCHEMAS = {
    "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
    "Error": obj({
        "error": {"type": "string", "description": "a short code, e.g. not_found or invalid"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "field name -> what is wrong with it"},
    }, ["error", "message"]),
    "Status": obj({
        "version": {"type": "string"},
        "backends": obj({"wireguard": {"type": "string"}, "ipsec": {"type": "string"}}, ["wireguard", "ipsec"]),
        "services": {"type": "array", "items": obj({
            "title": {"type": "string"}, "state": {"type": "string"},
            "detail": {"type": "string"}}, ["title", "state"], additional=True)},
        "counts": obj({k: {"type": "integer"} for k in
                       ("interfaces", "total", "active", "suspended", "expired", "quota", "online")},
                      ["interfaces", "total", "active", "suspended", "expired", "quota", "online"]),
    }, ["version", "backends", "services", "counts"]),
    "Interface": obj({
        "id": {"type": "integer"}, "name": {"type": "string"},
        **{k: dict(v, **({"type": ["string", "null"]} if k == "address6" else {}))
           for k, v in _INTERFACE_WRITABLE.items()},
        "public_key": {"type": "string"},
        "apply_error": {"type": ["string", "null"], "description": "why the live system lags behind, or null"},
        "client_count": {"type": "integer"}, "active_count": {"type": "integer"},
        "created_at": STAMP, "updated_at": STAMP,
    }, ["id", "name", *_INTERFACE_WRITABLE, "public_key", "apply_error", "client_count", "active_count"]),
    "InterfaceCreate": obj({
        "name": dict(INTERFACE_NAME, description="default: the next free wgN"),
        **_INTERFACE_WRITABLE,
        "private_key": {"type": "string", "description": "import this key instead of generating one"},
    }, ["address", "endpoint"]),
    "InterfaceUpdate": obj(_INTERFACE_WRITABLE),
    "InterfaceList": obj({"interfaces": {"type": "array", "items": ref("Interface")}}, ["interfaces"]),
    "AvailableIps": obj({"interface": {"type": "string"}, "addresses": {"type": "array", "items": {"type": "string"}}},
                        ["interface", "addresses"]),
    "DefaultLimitsApplied": obj({"interface": {"type": "string"}, "changed": {"type": "integer"}},
                                ["interface", "changed"]),
    "PortForward": obj({
        "id": {"type": "integer"}, "interface": {"type": "string"}, "client": {"type": "string"},
        "proto": {"type": "string", "enum": ["tcp", "udp"]},
        "ext_port": {"type": "integer", "description": "the server's port"},
        "dest_port": {"type": "integer", "description": "the client's port"},
    }, ["id", "interface", "client", "proto", "ext_port", "dest_port"]),
    "PortForwardCreate": obj({
        "client": dict(CLIENT_NAME, description="a client of this interface"),
        "proto": {"type": "string", "enum": ["tcp", "udp"]},
        "ext_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "dest_port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "default: ext_port"},
    }, ["client", "proto", "ext_port"]),
    "PortForwardList": obj({"port_forwards": {"type": "array", "items": ref("PortForward")}}, ["port_forwards"]),
    "Client": obj(_CLIENT, list(_CLIENT)),
    "ClientWithPassword": obj(dict(_CLIENT, password={"type": "string"}), [*_CLIENT, "password"],
                              description="a client with its IKEv2 password: returned only when it is set"),
    "ClientCreate": obj(dict(_CLIENT_WRITABLE, interface={"type": "string", "description": "interface name, e.g. wg0"}),
                        ["name", "interface"]),
    "ClientUpdate": obj(_CLIENT_WRITABLE),
    "ClientList": obj({
        "clients": {"type": "array", "items": ref("Client")},
        "total": {"type": "integer"}, "page": {"type": "integer"}, "per_page": {"type": "integer"},
    }, ["clients", "total", "page", "per_page"]),
    "Resume": obj({"expires_at": DATE}, description="an expired client needs a new expiry date (or null for none)"),
    "PasswordChange": obj({"password": dict(_CLIENT_WRITABLE["password"],
                                            description="the new password; omit to generate one")}),
    "Password": obj({"name": {"type": "string"}, "password": {"type": "string"}}, ["name", "password"]),
    "SessionsDropped": obj({"name": {"type": "string"}, "dropped": {"type": "array", "items": {"type": "string"}}},
                           ["name", "dropped"]),
    "Traffic": obj({
        "name": {"type": "string"},
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "granularity": {"type": "string", "enum": ["day", "hour", "month"]},
        "rows": {"type": "array", "items": obj({
            "period": {"type": "string", "description": "YYYY-MM-DD for days, YYYY-MM-DDTHH for hours, "
                                                        "YYYY-MM for months (UTC)"},
            "rx_bytes": {"type": "integer"}, "tx_bytes": {"type": "integer"}}, ["period", "rx_bytes", "tx_bytes"])},
        "total": obj({"rx_bytes": {"type": "integer"}, "tx_bytes": {"type": "integer"}}, ["rx_bytes", "tx_bytes"]),
    }, ["name", "from", "to", "granularity", "rows", "total"]),
    "Online": obj({"clients": {"type": "array", "items": obj({
        "name": {"type": "string"}, "interface": {"type": "string"},
        "protocol": {"type": "string", "enum": ["wireguard", "ikev2"]},
        "remote": {"type": ["string", "null"], "description": "address:port the client connects from"},
        "since": NULLABLE_STAMP,
        "last_handshake": NULLABLE_STAMP,
    }, ["name", "interface", "protocol", "remote", "since", "last_handshake"])}}, ["clients"]),
    "ShareLinkCreate": obj({
        "expires_in_hours": {"type": "integer", "minimum": 1, "maximum": 720, "default": 72},
        "max_uses": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
    }),
    "ShareLink": obj(_LINK, list(_LINK)),
    "ShareLinkCreated": obj(dict(_LINK, url={"type": "string", "description": "the link; shown only this once"}),
                            [*_LINK, "url"]),
    "ShareLinkList": obj({"links": {"type": "array", "items": ref("ShareLink")}}, ["links"]),
    "Certificate": obj(_CERT, list(_CERT)),
    "CaGenerate": obj({
        "common_name": {"type": "string", "maxLength": 64, "default": "puqvpn Root CA"},
        "organization": {"type": "string", "maxLength": 64, "default": "puqvpn"},
        "country": {"type": "string", "maxLength": 2},
        "state": {"type": "string", "maxLength": 128},
        "locality": {"type": "string", "maxLength": 128},
        "unit": {"type": "string", "maxLength": 64},
        "key_type": {"type": "string", "enum": ["rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384"],
                     "default": "rsa3072"},
        "replace": {"type": "boolean", "description": "replace an existing CA (every device must import the new one)"},
    }),
    "CaImport": obj({"certificate_pem": {"type": "string"}, "key_pem": {"type": "string"},
                     "replace": {"type": "boolean"}}, ["certificate_pem", "key_pem"]),
    "ServerCertCreate": obj({
        "domain": {"type": "string", "maxLength": 253, "description": "the server's DNS name, e.g. vpn.example.com"},
        "ipv4": {"type": "string", "description": "the server's public IPv4 address"},
        "ipv6": {"type": ["string", "null"], "description": "the server's public IPv6 address, if any"},
    }, ["domain", "ipv4"]),
}


# ------------------------------------------------------------------ checking requests

def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "null": "null", "array": "a list", "object": "an object"}


def _check_value(schema, value):
    """None if ``value`` fits ``schema`` (a flat property schema), else a message."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    kind = _json_type(value)
    fits = kind in types or (kind == "integer" and "number" in types)
    if not fits:
        return "must be " + " or ".join(_TYPE_WORDS[t] for t in types)
    if kind == "string":
        if "\x00" in value:
            return "must not contain a NUL byte"
        if len(value) > schema.get("maxLength", 10000):
            return f"use at most {schema['maxLength']} characters" if "maxLength" in schema else "is too long"
    if kind in ("integer", "number"):
        if value != value or value in (float("inf"), float("-inf")):
            return "must be a finite number"
        if "minimum" in schema and value < schema["minimum"]:
            return f"must be at least {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"must be at most {schema['maximum']}"
    if kind == "array":
        if len(value) > schema.get("maxItems", 1000):
            return f"give at most {schema.get('maxItems', 1000)} items"
        for item in value:
            problem = _check_value(schema.get("items", {}), item)
            if problem:
                return "each item " + problem
    if "enum" in schema and value not in schema["enum"]:
        return "must be one of " + ", ".join(str(v) for v in schema["enum"] if v is not None)
    return None


def check_body(name, data):
    """Check a parsed JSON body against schema ``name``; returns it, or raises ValidationError."""
    schema = SCHEMAS[name]
    if not isinstance(data, dict):
        raise ValidationError({"__all__": "the request body must be a JSON object"})
    properties = schema["properties"]
    errors = {}
    for key, value in data.items():
        if key not in properties:
            errors[key] = "unknown field"
            continue
        problem = _check_value(properties[key], value)
        if problem:
            errors[key] = problem
    for key in schema.get("required", ()):
        if key not in errors and (data.get(key) is None or data.get(key) == ""):
            errors[key] = "this field is required"
    if errors:
        raise ValidationError(errors)
    return data


def query_param(name, schema, required=False, description=None):
    param = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def check_query(params, args):
    """Check a query string (a mapping of str -> str) against query parameter specs; returns typed values."""
    values, errors = {}, {}
    known = {param["name"] for param in params}
    for name in args:
        if name not in known:
            errors[name[:40]] = "unknown parameter"
    for param in params:
        name, schema = param["name"], param["schema"]
        raw = args.get(name)
        if raw is None:
            if param["required"]:
                errors[name] = "this parameter is required"
            continue
        kind = schema["type"]
        if kind == "integer":
            if not re.fullmatch(r"-?[0-9]{1,9}", raw):
                errors[name] = "must be a whole number"
                continue
            value = int(raw)
        else:
            value = raw
        problem = _check_value(schema, value)
        if problem:
            errors[name] = problem
        elif schema.get("format") == "date" and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            errors[name] = "use the form YYYY-MM-DD"
        else:
            values[name] = value
    if errors:
        raise ValidationError(errors)
    return values


# ------------------------------------------------------------------ the document

ERROR_TEXT = {
    400: "The request is malformed (not JSON, or a bad query parameter).",
    401: "No token, or a wrong, expired or revoked one.",
    403: "The token's role is too low, or it is used from an address not on its list.",
    404: "No such object.",
    409: "The request conflicts with the object's state (e.g. the interface has no IKEv2).",
    422: "A field is invalid: see `fields`.",
    503: "The part of the panel this needs is not available.",
}


def path_and_params(rule):
    """Flask rule text -> OpenAPI path and its path parameters."""
    params = []

    def replace(match):
        converter, name = match.group(1), match.group(2)
        schema = {"type": "integer", "minimum": 1, "maximum": 2 ** 63 - 1} if converter == "int" else (
            dict(INTERFACE_NAME) if name == "interface_name" else dict(CLIENT_NAME) if name == "name"
            else {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    path = re.sub(r"<(?:(\w+):)?(\w+)>", replace, rule)
    return path, params


def document(operations, version, server_url="/"):
    """The OpenAPI 3.1 document for the registered operations (see puqvpn/views/api.py)."""
    paths = {}
    for op in operations:
        path, params = path_and_params(op["rule"])
        responses = {}
        if op["content"]:
            media, schema = op["content"], {"type": "string"}
            responses[str(op["status"])] = {"description": op["response_description"],
                                            "content": {media: {"schema": schema}}}
        elif op["response"]:
            responses[str(op["status"])] = {"description": op["response_description"],
                                            "content": {"application/json": {"schema": ref(op["response"])}}}
        else:
            responses[str(op["status"])] = {"description": op["response_description"]}
        errors = {400, 401, 403} | set(op["errors"])
        if params:
            errors.add(404)
        if op["body"] or op["query"]:
            errors.add(422)
        for code in sorted(errors):
            responses[str(code)] = {"description": ERROR_TEXT[code],
                                    "content": {"application/json": {"schema": ref("Error")}}}
        operation = {
            "operationId": op["endpoint"],
            "summary": op["summary"],
            "description": (op["description"] + "\n\n" if op["description"] else "")
            + (f"Needs a token with the **{op['role']}** role or higher." if op["auth"] else "No token needed."),
            "tags": [op["tag"]],
            "responses": responses,
        }
        if not op["auth"]:
            operation["security"] = []
            for code in ("401", "403"):
                responses.pop(code)
        if params or op["query"]:
            operation["parameters"] = params + list(op["query"])
        if op["body"]:
            operation["requestBody"] = {"required": op["body_required"],
                                        "content": {"application/json": {"schema": ref(op["body"])}}}
        paths.setdefault(path, {})[op["method"].lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "puqvpn API",
            "version": version,
            "description": "Manage WireGuard and IKEv2 VPN clients from billing systems and scripts. "
                           "Authenticate with `Authorization: Bearer <token>`; an admin creates tokens "
                           "in the panel (System → API tokens) or with `puqvpn token create`.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

"""IKEv2 through strongSwan: swanctl files for reboots, VICI for live changes.

Every client of an interface with ``ikev2_enabled = 1`` can also connect with
IKEv2 EAP-MSCHAPv2 and gets the same tunnel IP as its WireGuard peer:

- a "probe" connection with ``eap_id = %any`` and a group nobody has ranks
  first (its ``remote_addrs`` /1 halves beat ``%any``), so charon always asks
  for the EAP identity and then, after MSCHAPv2, switches to the user's own
  connection;
- one connection per client, ``remote { eap_id = <username> }``, with a
  one-address pool holding the client's WireGuard IP.

Proposals, local auth and certificate are identical on every connection, so
charon may switch between them.  Names are derived from the client id
(``puqvpn-c17``), never from user input.

The files under SWANCTL_DIR are what charon loads at boot (``swanctl
--load-all``); VICI changes the running daemon one client at a time.  charon
is never restarted here.
"""

import base64
import copy
import ipaddress
import json
import os
import re
import socket
import time
from pathlib import Path

from . import pki
from .system import CommandError
from .validation import FieldError, ValidationError
from .validation import password as check_password
from .validation import username as check_username
from .util import write_atomic

PREFIX = "puqvpn"
PROBE = f"{PREFIX}-probe"
NOBODY_GROUP = f"{PREFIX}-no-such-group"
# /1 halves rank above the %any of the per-user connections, so the probe is
# the first candidate whatever the load order.
PROBE_REMOTE_ADDRS = ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
CA_FILE = f"{PREFIX}-ca.pem"
CERT_FILE = f"{PREFIX}-server.pem"
KEY_FILE = f"{PREFIX}-server.pem"
CONF_FILE = f"{PREFIX}.conf"
LIBIPSEC_SNIPPET = f"{PREFIX}-libipsec.conf"
OPTIONS_KEY = "ikev2"

# The proposals offered, modern first, each with the clients it is there for.
# Profiles pick their parameters from these, so keep the two in step.
IKE_PROPOSALS = [
    ("aes256gcm16-prfsha384-ecp384", "the panel's profiles: strongSwan app (Android), iOS/macOS "
                                     ".mobileconfig, Windows script, NetworkManager"),
    ("aes256gcm16-prfsha256-ecp256", "AES-GCM clients that offer ECP-256 only"),
    ("aes256-sha256-ecp256", "clients without AES-GCM for IKE"),
    ("aes256-sha256-modp2048", "iOS/macOS set up by hand (AES-256, SHA2-256, group 14)"),
    ("aes128-sha256-modp2048", "older Android and Linux clients"),
    ("aes256-sha1-modp1024", "Windows built-in client with its defaults (no script, no registry edit)"),
    ("aes128-sha1-modp1024", "Windows built-in client, older builds"),
]
ESP_PROPOSALS = [
    ("aes256gcm16-ecp384", "the panel's profiles, with PFS (ECP-384) when the child SA is rekeyed"),
    ("aes256gcm16-ecp256", "AES-GCM clients with PFS group ECP-256"),
    ("aes256gcm16", "the first child SA of every client (no key exchange there), clients without PFS"),
    ("aes256-sha256", "iOS/macOS set up by hand, clients without AES-GCM for ESP"),
    ("aes256-sha256-modp2048", "clients with PFS group 14"),
    ("aes256-sha1", "Windows built-in client with its defaults"),
    ("aes128-sha1", "Windows built-in client, older builds"),
]

DEFAULT_OPTIONS = {
    "ike_proposals": [p for p, _ in IKE_PROPOSALS],
    "esp_proposals": [p for p, _ in ESP_PROPOSALS],
    "dpd_delay": 30,                 # seconds between liveness checks of a silent client
    "ike_rekey_time": 14400,         # seconds; 0 leaves rekeying to the client
    "child_rekey_time": 3600,
    "mobike": True,
    "fragmentation": True,
}

PROPOSAL = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# Everything written unquoted into swanctl.conf: no spaces, quotes, braces,
# commas (list separators), '#', newlines or '$' (charon expands ${...}).
SAFE_VALUE = re.compile(r"[A-Za-z0-9_.@:/%+=-]*")


class StrongswanError(CommandError):
    """charon could not be reached or refused a change; the message says which and why."""

    def __init__(self, message):
        self.argv, self.returncode, self.stderr = ["vici"], None, ""
        self.reason = message
        Exception.__init__(self, message)

    def describe(self):
        return self.reason


# ------------------------------------------------------------------ options

def _options_row(db):
    rows = list(db.query("SELECT value FROM options WHERE key = ?", [OPTIONS_KEY]))
    return json.loads(rows[0]["value"]) if rows else {}


def get_options(db):
    """The advanced IKEv2 settings: stored values over the defaults."""
    options = copy.deepcopy(DEFAULT_OPTIONS)
    options.update({k: v for k, v in _options_row(db).items() if k in DEFAULT_OPTIONS})
    return options


def _proposal_list(value, field, errors):
    if isinstance(value, str):
        value = re.split(r"[\s,]+", value)
    items = [item.strip().lower() for item in (value or []) if item and item.strip()]
    if not items:
        errors[field] = "List at least one proposal."
    elif len(items) > 32:
        errors[field] = "At most 32 proposals."
    else:
        bad = [item for item in items if len(item) > 100 or not PROPOSAL.fullmatch(item)]
        if bad:
            errors[field] = f"Not a proposal: {bad[0][:40]!r} (use algorithms joined by '-', e.g. aes256-sha256-modp2048)."
    return items


def _seconds(value, field, errors, low, high):
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        errors[field] = "Enter a whole number of seconds."
        return None
    if number != 0 and not low <= number <= high:
        errors[field] = f"Use 0 or {low} to {high} seconds."
    return number


def _flag(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def validate_options(values):
    """Clean advanced settings from a form or JSON; raises ValidationError."""
    errors = {}
    current = copy.deepcopy(DEFAULT_OPTIONS)
    current.update(values)
    options = {
        "ike_proposals": _proposal_list(current["ike_proposals"], "ike_proposals", errors),
        "esp_proposals": _proposal_list(current["esp_proposals"], "esp_proposals", errors),
        "dpd_delay": _seconds(current["dpd_delay"], "dpd_delay", errors, 5, 3600),
        "ike_rekey_time": _seconds(current["ike_rekey_time"], "ike_rekey_time", errors, 600, 7 * 86400),
        "child_rekey_time": _seconds(current["child_rekey_time"], "child_rekey_time", errors, 300, 86400),
        "mobike": _flag(current["mobike"]),
        "fragmentation": _flag(current["fragmentation"]),
    }
    if errors:
        raise ValidationError(errors)
    return options


def _save_options(db, options):
    conn = db.conn
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        if options is None:
            conn.execute("DELETE FROM options WHERE key = ?", [OPTIONS_KEY])
        else:
            conn.execute("INSERT INTO options (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         [OPTIONS_KEY, json.dumps(options)])
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    if own:
        conn.execute("COMMIT")


def set_options(db, values):
    """Store the advanced settings; call apply.reconcile afterwards to push them."""
    options = validate_options(values)
    _save_options(db, options)
    return options


def reset_options(db):
    """Back to DEFAULT_OPTIONS."""
    _save_options(db, None)
    return get_options(db)


# ------------------------------------------------------------------ checks

def _safe(value, what):
    value = str(value)
    if not SAFE_VALUE.fullmatch(value):
        raise StrongswanError(f"refusing to write {what} {value[:40]!r} into the strongSwan "
                              "configuration: it holds characters that could break out of its line")
    return value


def check_credentials(client):
    """Username and password fit for swanctl and EAP-MSCHAPv2, or StrongswanError."""
    try:
        check_username(client["username"])
        check_password(client["password"])
    except FieldError as error:
        raise StrongswanError(f"client {client.get('name', client['id'])}: the IKEv2 "
                              f"credentials are unusable: {error}") from None
    _safe(client["username"], "the username")
    # Passwords go to the file base64-encoded ("0s..."), so no character of
    # theirs can end the value; these ones are refused all the same.
    if any(c in client["password"] for c in "\"'\\\n\r\x00"):
        raise StrongswanError(f"client {client.get('name', client['id'])}: the password holds "
                              "quotes, backslashes or line breaks")


# ------------------------------------------------------------------ desired state

def names(client_id):
    cid = int(client_id)
    return {"conn": f"{PREFIX}-c{cid}", "pool": f"{PREFIX}-p{cid}", "pool6": f"{PREFIX}-p{cid}v6",
            "secret": f"eap-{PREFIX}-s{cid}"}


def client_id_of(name):
    """The client id behind a connection name such as puqvpn-c17, else None."""
    match = re.fullmatch(rf"{PREFIX}-c([0-9]+)", str(name))
    return int(match.group(1)) if match else None


def interface_active(ctx, interface):
    """IKEv2 runs for this interface: switched on, the interface enabled, both certificates present."""
    return bool(interface and interface.get("ikev2_enabled") and interface.get("enabled", 1)
                and pki.ready(ctx.db))


def _local_ts(interface):
    items = [item.strip() for item in str(interface.get("allowed_ips") or "").split(",") if item.strip()]
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise StrongswanError(f"{interface['name']}: allowed IPs entry {item!r} is not a network") from None
    return networks or [str(ipaddress.ip_interface(interface["address"]).network)]


def _dns(interface):
    servers = []
    for item in str(interface.get("dns") or "").split(","):
        item = item.strip()
        if item:
            try:
                servers.append(str(ipaddress.ip_address(item)))
            except ValueError:
                pass        # a search domain: IKEv2 has no attribute for it
    return servers


def _base_conn(options, identity, local_ts, child_name):
    conn = {
        "version": "2",
        "send_cert": "always",
        "unique": "replace",
        "encap": "no",
        "mobike": "yes" if options["mobike"] else "no",
        "fragmentation": "yes" if options["fragmentation"] else "no",
        "dpd_delay": f"{options['dpd_delay']}s",
        "rekey_time": f"{options['ike_rekey_time']}s",
        "proposals": list(options["ike_proposals"]),
        "local": {"auth": "pubkey", "certs": [CERT_FILE], "id": identity},
        "remote": {"auth": "eap-mschapv2", "eap_id": "%any"},
        "children": {child_name: {
            "local_ts": list(local_ts),
            "esp_proposals": list(options["esp_proposals"]),
            "rekey_time": f"{options['child_rekey_time']}s",
            "dpd_action": "clear",
        }},
    }
    return conn


def client_conn(options, identity, interface, client):
    """The connection for one client (name, dict)."""
    n = names(client["id"])
    conn = _base_conn(options, identity, _local_ts(interface), n["conn"])
    conn["pools"] = [n["pool"]] + ([n["pool6"]] if client.get("ip6") and interface.get("address6") else [])
    conn["remote"] = {"auth": "eap-mschapv2", "eap_id": _safe(client["username"], "the username")}
    return n["conn"], conn


def probe_conn(options, identity):
    conn = _base_conn(options, identity, ["0.0.0.0/0", "::/0"], PROBE)
    conn["remote_addrs"] = list(PROBE_REMOTE_ADDRS)
    conn["remote"]["groups"] = [NOBODY_GROUP]
    return PROBE, conn


def client_pools(interface, client):
    # interface["dns"] is already the effective list (see desired()).
    n = names(client["id"])
    dns = _dns(interface)
    pools = {n["pool"]: {"addrs": f"{ipaddress.IPv4Address(client['ip'])}/32"}}
    if client.get("ip6") and interface.get("address6"):
        pools[n["pool6"]] = {"addrs": f"{ipaddress.IPv6Address(client['ip6'])}/128"}
    if dns:
        pools[n["pool"]]["dns"] = dns
    return pools


def client_secret(client):
    """(name, {id, secret}) for the file; the secret base64-encoded with swanctl's 0s prefix."""
    encoded = base64.b64encode(client["password"].encode()).decode()
    return names(client["id"])["secret"], {"id": client["username"], "secret": "0s" + encoded}


def desired(ctx):
    """Everything charon should hold, from the database: a dict of connections, pools, secrets."""
    state = {"connections": {}, "pools": {}, "secrets": {}, "clients": {}}
    if not pki.ready(ctx.db):
        return state
    options = get_options(ctx.db)
    identity = _safe(pki.server_identity(ctx.db), "the server identity")
    from .resolver import effective_dns
    # Clients get the panel's resolver when it is on, like the WireGuard profiles.
    interfaces = [dict(row, dns=effective_dns(ctx.db, row))
                  for row in ctx.db.query("SELECT * FROM interfaces ORDER BY name")
                  if interface_active(ctx, row)]
    if not interfaces:
        return state
    name, conn = probe_conn(options, identity)
    state["connections"][name] = conn
    for interface in interfaces:
        for client in ctx.db.query("SELECT * FROM clients WHERE interface_id = ? AND suspended_reason IS NULL "
                                   "ORDER BY ip_int", [interface["id"]]):
            try:
                check_credentials(client)
            except StrongswanError:
                continue        # left out of the file; client_changed reports it
            name, conn = client_conn(options, identity, interface, client)
            state["connections"][name] = conn
            state["pools"].update(client_pools(interface, client))
            secret_name, secret = client_secret(client)
            state["secrets"][secret_name] = secret
            state["clients"][client["id"]] = (interface, client)
    return state


# ------------------------------------------------------------------ files

def _render_value(value):
    if isinstance(value, (list, tuple)):
        return ",".join(_safe(item, "a value") for item in value)
    return _safe(value, "a value")


def _render_section(name, body, indent):
    pad = "  " * indent
    lines = [f"{pad}{_safe(name, 'a section name')} {{"]
    for key, value in body.items():
        if isinstance(value, dict):
            lines += _render_section(key, value, indent + 1)
        else:
            lines.append(f"{pad}  {_safe(key, 'a key')} = {_render_value(value)}")
    lines.append(f"{pad}}}")
    return lines


def render_conf(state):
    """conf.d/puqvpn.conf: connections, pools and secrets in swanctl.conf syntax."""
    lines = ["# Written by puqvpn from its database; edits here are overwritten.", ""]
    for section in ("connections", "pools", "secrets"):
        if state[section]:
            lines += _render_section(section, state[section], 0)
    return "\n".join(lines) + "\n"


def swanctl_dir(ctx):
    return Path(ctx.settings["SWANCTL_DIR"])


def write_files(ctx, state=None):
    """Write what charon needs after a reboot; returns the paths that changed."""
    state = desired(ctx) if state is None else state
    base = swanctl_dir(ctx)
    for sub in ("conf.d", "x509", "x509ca", "private"):
        (base / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    main = base / "swanctl.conf"
    if not main.exists():
        # Debian's swanctl.conf includes conf.d; a bare SWANCTL_DIR needs its own
        write_atomic(main, "include conf.d/*.conf\n", mode=0o644)
    changed = []
    ca, server = pki.get(ctx.db, "ca"), pki.get(ctx.db, "server")
    files = {
        base / "x509ca" / CA_FILE: (ca["cert_pem"] if ca else None, 0o644),
        base / "x509" / CERT_FILE: (server["cert_pem"] if server else None, 0o644),
        base / "private" / KEY_FILE: (server["key_pem"] if server else None, 0o600),
        base / "conf.d" / CONF_FILE: (render_conf(state), 0o600),
    }
    for path, (text, mode) in files.items():
        if text is None:
            if path.exists():
                path.unlink()
                changed.append(str(path))
        elif write_atomic(path, text, mode=mode):
            changed.append(str(path))
    return changed


# ------------------------------------------------------------------ backend detection

def _kernel_has_esp():
    if Path("/sys/module/esp4").exists():
        return True
    release = os.uname().release
    modules = Path("/lib/modules") / release
    try:
        if "esp4.ko" in (modules / "modules.builtin").read_text():
            return True
    except OSError:
        pass
    return any(modules.glob("kernel/net/ipv4/esp4.ko*")) if modules.is_dir() else False


def ipsec_backend(ctx):
    """'kernel' where the kernel has ESP, else 'libipsec' (userspace ESP on a TUN device)."""
    forced = str(ctx.settings.get("IPSEC_BACKEND", "auto")).strip().lower()
    if forced in ("kernel", "libipsec"):
        return forced
    if forced != "auto":
        raise StrongswanError(f"IPSEC_BACKEND must be auto, kernel or libipsec, not {forced!r}")
    return "kernel" if _kernel_has_esp() else "libipsec"


LIBIPSEC_TEXT = """\
# Written by puqvpn: this kernel has no ESP, so charon does ESP in userspace
# on a TUN device (kernel-libipsec).  Routes through table 220 to it are needed.
charon {
  install_routes = yes
  plugins {
    kernel-libipsec {
      load = yes
    }
  }
}
"""


def write_backend_snippet(ctx):
    """Enable kernel-libipsec in STRONGSWAN_CONF_DIR when needed; True if the file changed.

    charon reads it when it starts: a change needs a restart of strongSwan,
    which is left to the admin (or the installer).
    """
    path = Path(ctx.settings["STRONGSWAN_CONF_DIR"]) / LIBIPSEC_SNIPPET
    if ipsec_backend(ctx) == "libipsec":
        return write_atomic(path, LIBIPSEC_TEXT, mode=0o644)
    if path.exists():
        path.unlink()
        return True
    return False


# ------------------------------------------------------------------ VICI

def socket_path(ctx):
    value = str(ctx.settings.get("VICI_SOCKET") or "/var/run/charon.vici")
    return value[len("unix://"):] if value.startswith("unix://") else value


def open_session(ctx, timeout=10):
    """A vici.Session on VICI_SOCKET, or StrongswanError saying why not."""
    import vici

    path = socket_path(ctx)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise StrongswanError(f"strongSwan (charon) is not running: no VICI socket at {path}") from None
    except ConnectionRefusedError:
        sock.close()
        raise StrongswanError(f"strongSwan (charon) is not running: {path} refuses connections") from None
    except OSError as error:
        sock.close()
        raise StrongswanError(f"cannot reach charon on {path}: {error.strerror or error}") from None
    return vici.Session(sock)


def _vici_call(what, function, *args):
    import vici.exception

    try:
        result = function(*args)
        if hasattr(result, "__next__"):
            result = list(result)
        return result
    except vici.exception.CommandException as error:
        raise StrongswanError(f"charon refused to {what}: {error}") from None
    except (vici.exception.SessionException, OSError) as error:
        raise StrongswanError(f"lost the VICI connection to charon while trying to {what}: {error}") from None


def _s(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def charon_status(ctx):
    """{'up': True, daemon, version, since, uptime, ike_sas} or {'up': False, 'reason': ...}."""
    try:
        session = open_session(ctx, timeout=3)
    except StrongswanError as error:
        return {"up": False, "reason": str(error), "backend": _safe_backend(ctx)}
    try:
        version = _vici_call("report its version", session.version)
        stats = _vici_call("report statistics", session.stats)
    except StrongswanError as error:
        return {"up": False, "reason": str(error), "backend": _safe_backend(ctx)}
    finally:
        _close(session)
    uptime = stats.get("uptime", {})
    return {
        "up": True,
        "daemon": _s(version.get("daemon")),
        "version": _s(version.get("version")),
        "since": _s(uptime.get("since")),
        "uptime": _s(uptime.get("running")),
        "ike_sas": int(_s(stats.get("ikesas", {}).get("total", 0)) or 0),
        "backend": _safe_backend(ctx),
    }


def _safe_backend(ctx):
    try:
        return ipsec_backend(ctx)
    except StrongswanError as error:
        return str(error)


def _close(session):
    try:
        session.transport.socket.close()
    except (AttributeError, OSError):
        pass


def _vici_conn(conn, server_cert_pem):
    """The file form of a connection, with certificate contents where the file names a file."""
    conn = copy.deepcopy(conn)
    conn["local"]["certs"] = [server_cert_pem]
    return conn


def load_credentials(session, ctx):
    """CA, server certificate and key into charon."""
    ca, server = pki.get(ctx.db, "ca"), pki.get(ctx.db, "server")
    _vici_call("load the CA certificate", session.load_cert,
               {"type": "x509", "flag": "ca", "data": ca["cert_pem"]})
    _vici_call("load the server certificate", session.load_cert,
               {"type": "x509", "flag": "none", "data": server["cert_pem"]})
    key_type = "ecdsa" if pki.key_description(pki.load_key(server["key_pem"])).startswith("ECDSA") else "rsa"
    _vici_call("load the server key", session.load_key, {"type": key_type, "data": server["key_pem"]})


def load_client(session, ctx, state, client_id):
    """Load one client's pool(s), secret and connection."""
    interface, client = state["clients"][client_id]
    n = names(client_id)
    server = pki.get(ctx.db, "server")
    for pool_name in (n["pool"], n["pool6"]):
        if pool_name in state["pools"]:
            _load_pool(session, ctx, client, pool_name, state["pools"][pool_name])
    secret_name, secret = client_secret(client)
    _vici_call(f"load the EAP secret of {client['username']}", session.load_shared,
               {"id": secret_name, "type": "EAP", "data": client["password"], "owners": [client["username"]]})
    _vici_call(f"load the connection of {client['username']}", session.load_conn,
               {n["conn"]: _vici_conn(state["connections"][n["conn"]], server["cert_pem"])})


def _load_pool(session, ctx, client, name, pool):
    try:
        _vici_call(f"load the address pool of {client['username']}", session.load_pool, {name: pool})
    except StrongswanError:
        # a pool whose address changed cannot be replaced while leased: drop the SA first
        _terminate(session, names(client["id"])["conn"], client["username"])
        _vici_call(f"load the address pool of {client['username']}", session.load_pool, {name: pool})


def load_probe(session, ctx, state):
    server = pki.get(ctx.db, "server")
    _vici_call("load the probe connection", session.load_conn,
               {PROBE: _vici_conn(state["connections"][PROBE], server["cert_pem"])})


def unload_client(session, ctx, client):
    """Unload one client's secret and connection, end its SAs, then free its pools."""
    n = names(client["id"])
    loaded = _loaded(session)
    if n["secret"] in loaded["secrets"]:
        _vici_call(f"unload the EAP secret of {client['username']}", session.unload_shared, {"id": n["secret"]})
    if n["conn"] in loaded["conns"]:
        _vici_call(f"unload the connection of {client['username']}", session.unload_conn, {"name": n["conn"]})
    _terminate(session, n["conn"], client["username"])
    for pool_name in (n["pool"], n["pool6"]):
        if pool_name in loaded["pools"]:
            _unload_pool(session, pool_name, f"unload the address pool of {client['username']}")


def _unload_pool(session, name, what, wait=5.0):
    """Unload a pool once the SAs just terminated have released its lease (charon does that a moment later)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return _vici_call(what, session.unload_pool, {"name": name})
        except StrongswanError as error:
            if "online leases" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _loaded(session):
    conns = _vici_call("list connections", session.get_conns).get("conns", [])
    secrets = _vici_call("list secrets", session.get_shared).get("keys", [])
    pools = _vici_call("list pools", session.get_pools, {})
    return {"conns": [_s(c) for c in conns], "secrets": [_s(k) for k in secrets],
            "pools": [_s(p) for p in pools]}


# ------------------------------------------------------------------ sessions

def _parse_sa(name, ike):
    user = _s(ike.get("remote-eap-id") or ike.get("remote-id"))   # eap id only when it differs
    bytes_in = bytes_out = 0
    for child in (ike.get("child-sas") or {}).values():
        bytes_in += int(_s(child.get("bytes-in", 0)) or 0)
        bytes_out += int(_s(child.get("bytes-out", 0)) or 0)
    established = int(_s(ike.get("established", 0)) or 0)
    return {
        "ike_id": _s(ike.get("uniqueid")),
        "conn": _s(name),
        "client_id": client_id_of(_s(name)),
        "user": user,
        "state": _s(ike.get("state")),
        "remote_addr": _s(ike.get("remote-host")),
        "remote_port": int(_s(ike.get("remote-port", 0)) or 0),
        "virtual_ips": [_s(ip) for ip in ike.get("remote-vips", [])],
        "established_seconds": established,
        "connected_since": int(time.time()) - established,
        "bytes_in": bytes_in,       # received from the client: its upload
        "bytes_out": bytes_out,     # sent to the client: its download
        "children": len(ike.get("child-sas") or {}),
    }


def list_sessions(ctx, session=None, established_only=True):
    """The IKE SAs charon holds, one dict each; one list_sas per call.

    Half-open SAs (a refused password, a client still authenticating) are
    left out unless ``established_only`` is False.
    """
    own = session is None
    session = session or open_session(ctx)
    try:
        sas = _vici_call("list IKE SAs", session.list_sas)
    finally:
        if own:
            _close(session)
    result = []
    for entry in sas:
        for name, ike in entry.items():
            sa = _parse_sa(name, ike)
            if sa["state"] == "ESTABLISHED" or not established_only:
                result.append(sa)
    return result


def _terminate(session, conn_name, username=None):
    """End the IKE SAs of one connection (and of one EAP identity, if given); returns how many."""
    ended = 0
    for entry in _vici_call("list IKE SAs", session.list_sas):
        for name, ike in entry.items():
            sa = _parse_sa(name, ike)
            if sa["conn"] == conn_name or (username is not None and sa["user"] == username
                                           and sa["conn"] != PROBE):
                _vici_call(f"end the session {sa['ike_id']} of {sa['user']}", session.terminate,
                           {"ike-id": sa["ike_id"], "timeout": 5000, "force": "yes"})
                ended += 1
    return ended


def terminate_client(ctx, client):
    """End every IKE SA of this client, and only those; returns how many."""
    session = open_session(ctx)
    try:
        return _terminate(session, names(client["id"])["conn"], client["username"])
    finally:
        _close(session)


def terminate_sa(ctx, ike_id):
    """Drop one IKE SA by its unique id (the sessions page's "drop connection")."""
    session = open_session(ctx)
    try:
        _vici_call("end the session", session.terminate,
                   {"ike-id": str(int(ike_id)), "timeout": 5000, "force": "yes"})
    finally:
        _close(session)


# ------------------------------------------------------------------ backend hooks

def _session_or_none(ctx, needed):
    """A session when charon must be reached; None when it is down and nothing needs it."""
    try:
        return open_session(ctx)
    except StrongswanError:
        if needed:
            raise
        return None


def _in_use(ctx):
    return pki.get(ctx.db, "ca") is not None or bool(
        list(ctx.db.query("SELECT 1 FROM interfaces WHERE ikev2_enabled LIMIT 1")))


def _write(ctx, state):
    """Write the files, except on a server that never used IKEv2 (it may not even have strongSwan)."""
    if not _in_use(ctx) and not swanctl_dir(ctx).exists():
        return []
    return [f"wrote {path}" for path in write_files(ctx, state)]


def client_changed(ctx, interface, client):
    """Load or unload this one client's secret, connection and pool."""
    state = desired(ctx)
    changes = _write(ctx, state)
    if not interface_active(ctx, interface):
        return changes
    active = client["suspended_reason"] is None
    if active:
        check_credentials(client)
    session = open_session(ctx)
    try:
        if active:
            load_credentials(session, ctx)
            load_probe(session, ctx, state)
            load_client(session, ctx, state, client["id"])
            changes.append(f"loaded IKEv2 user {client['username']}")
        else:
            unload_client(session, ctx, client)
            changes.append(f"unloaded IKEv2 user {client['username']} ({client['suspended_reason']})")
    finally:
        _close(session)
    return changes


def client_removed(ctx, interface, client):
    state = desired(ctx)
    changes = _write(ctx, state)
    if not interface_active(ctx, interface):
        return changes
    session = open_session(ctx)
    try:
        unload_client(session, ctx, client)
    finally:
        _close(session)
    return changes + [f"removed IKEv2 user {client['username']}"]


def interface_changed(ctx, interface, clients):
    return reconcile(ctx, [(interface, clients)])


def interface_removed(ctx, interface):
    return reconcile(ctx, [])


def reconcile(ctx, interfaces):
    """Make files and charon match the database: load what is missing, unload what is not wanted.

    Only this panel's items (names starting with 'puqvpn-') are touched.
    ``interfaces`` is accepted for the backend protocol; the desired state is
    read from the database as a whole, since the probe and the files are shared.
    """
    state = desired(ctx)
    changes = _write(ctx, state)
    if (_in_use(ctx) or Path(ctx.settings["STRONGSWAN_CONF_DIR"]).exists()) and write_backend_snippet(ctx):
        changes.append(f"IPsec backend set to {ipsec_backend(ctx)}: restart strongSwan to use it")
    needed = bool(state["connections"])
    session = _session_or_none(ctx, needed)
    if session is None:
        return changes
    try:
        loaded = _loaded(session)
        mine = {
            "conns": [c for c in loaded["conns"] if c.startswith(PREFIX + "-")],
            "secrets": [k for k in loaded["secrets"] if k.startswith(f"eap-{PREFIX}-")],
            "pools": [p for p in loaded["pools"] if p.startswith(PREFIX + "-")],
        }
        stale_conns = [c for c in mine["conns"] if c not in state["connections"]]
        for name in stale_conns:
            _vici_call(f"unload connection {name}", session.unload_conn, {"name": name})
        for name in [k for k in mine["secrets"] if k not in state["secrets"]]:
            _vici_call(f"unload secret {name}", session.unload_shared, {"id": name})
        for name in stale_conns:
            _terminate(session, name)
            changes.append(f"unloaded {name}")
        for name in [p for p in mine["pools"] if p not in state["pools"]]:
            _unload_pool(session, name, f"unload pool {name}")
        if needed:
            # reloading is idempotent (charon replaces a connection in place), and
            # picks up changed options; only what was missing counts as a change
            load_credentials(session, ctx)
            load_probe(session, ctx, state)
            for client_id in state["clients"]:
                load_client(session, ctx, state, client_id)
            missing = [name for name in state["connections"] if name not in mine["conns"]]
            if missing:
                changes.append(f"loaded {', '.join(missing)}")
    finally:
        _close(session)
    return changes + _heal_limits(ctx)


def _heal_limits(ctx):
    """charon makes libipsec's TUN device afresh whenever it starts, without our tc classes: put them back.

    Here because this is where a restarted charon is first talked to; the
    periodic reconcile then heals a restart within its interval.
    """
    from . import shaping

    if shaping.heal_ipsec_device(ctx) == "built":
        return [f"{ctx.settings.get('IPSEC_DEVICE', 'ipsec0')}: IKEv2 client limits rebuilt after charon started"]
    return []

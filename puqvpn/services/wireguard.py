"""WireGuard on the live system: interfaces, peers, config files and status.

The apply layer calls the backend hooks at the bottom of this module.  One
client's change touches only that client's peer (``wg set … peer …``), so
every other peer keeps its session, handshake and counters; ``wg syncconf``
is used when a whole interface is applied or reconciled, and it too only
changes what differs.  Keys never appear on a command line: they go through
stdin (``/dev/stdin``) or the 0600 config file.

Two ways to run an interface, detected once: the kernel module
(``ip link add … type wireguard``) or the userspace daemon ``wireguard-go``,
which creates a TUN device and a control socket in ``WG_RUN_DIR``.  Both are
driven with the same ``wg`` commands and both go away with ``ip link del``.
"""

import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from pathlib import Path

from . import wgconfig
from .system import CommandError, FakeRunner
from .util import write_atomic

log = logging.getLogger(__name__)

# Linux interface names; no leading '-' so a name can never read as an option.
NAME = re.compile(r"[A-Za-z0-9_=+.][A-Za-z0-9_=+.-]{0,14}")
# The first line render_server_config writes: marks files the panel owns.
MANAGED_MARK = "managed by puqvpn"

_backends = {}
_backends_lock = threading.Lock()


class WireGuardError(RuntimeError):
    """A WireGuard change could not be made; the message says which and why."""


def check_name(name):
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise WireGuardError(f"refusing to use {name!r} as an interface name")
    return name


# ------------------------------------------------------------------ backend

def backend(ctx):
    """'kernel' or 'userspace' (wireguard-go): forced by WG_BACKEND, else detected once.

    Detection creates and deletes a throw-away kernel WireGuard link; where the
    module is missing (containers, this kind of VM) that fails and wireguard-go
    is used.
    """
    forced = str(ctx.settings.get("WG_BACKEND", "auto")).strip().lower()
    if forced in ("kernel", "userspace"):
        return forced
    if forced != "auto":
        raise WireGuardError(f"WG_BACKEND must be auto, kernel or userspace, not {forced!r}")
    # Real runners share the answer per namespace; a FakeRunner keeps its own.
    key = (getattr(ctx.runner, "netns", ""), ctx.settings.get("IP_BIN", "ip"),
           id(ctx.runner) if isinstance(ctx.runner, FakeRunner) else None)
    with _backends_lock:
        if key not in _backends:
            _backends[key] = _detect(ctx)
        return _backends[key]


def forget_backend():
    """Drop the detected backend (tests, or after installing the kernel module)."""
    with _backends_lock:
        _backends.clear()


def _detect(ctx):
    ip = ctx.settings.get("IP_BIN", "ip")
    probe = "pqvprobe" + secrets.token_hex(3)
    result = ctx.runner.run([ip, "link", "add", probe, "type", "wireguard"], check=False)
    if result.returncode == 0:
        ctx.runner.run([ip, "link", "del", probe], check=False)
        return "kernel"
    return "userspace"


# ------------------------------------------------------------------ config file

def config_path(ctx, name):
    return Path(ctx.settings["WG_CONF_DIR"]) / f"{check_name(name)}.conf"


def write_config(ctx, interface, clients):
    """Write WG_CONF_DIR/<name>.conf (wg-quick format); True if it changed."""
    text = wgconfig.render_server_config(interface, clients)
    return write_atomic(config_path(ctx, interface["name"]), text)


# One client's change rewrites the config file shortly after, off the request
# path: rendering every peer of a 10,000-peer interface costs more than the
# live change itself, and a burst of changes (a bulk suspend) coalesces into
# one write.  The file only matters while the panel is not running, and the
# reconcile at start-up rewrites it from the database anyway.
WRITE_DELAY = 0.2
_writes = {}
_writes_lock = threading.Condition()
_writer = None


def schedule_config_write(ctx, interface):
    """Rewrite <name>.conf from the database in WRITE_DELAY seconds, in a background thread."""
    global _writer
    key = (ctx.settings["DATABASE"], ctx.settings["WG_CONF_DIR"], interface["id"])
    with _writes_lock:
        _writes[key] = ctx.settings
        if _writer is None:
            _writer = threading.Thread(target=_write_pending, name="wg-config-writer")
            _writer.start()


def _write_pending():
    global _writer
    from ..db import connect

    while True:
        time.sleep(WRITE_DELAY)
        with _writes_lock:
            batch = dict(_writes)
            _writes.clear()
            if not batch:
                _writer = None
                _writes_lock.notify_all()
                return
        for (database, _folder, interface_id), settings in batch.items():
            if not Path(database).exists():
                continue
            db = connect(database, migrate=False)
            try:
                interface = next(db.query("SELECT * FROM interfaces WHERE id = ?", [interface_id]), None)
                if interface is None:
                    continue
                ctx = _FileContext(db, settings)
                try:
                    write_config(ctx, interface, _clients(ctx, interface))
                except (OSError, ValueError, WireGuardError) as error:
                    log.error("writing the config of %s failed: %s", interface["name"], error)
                    db.execute("UPDATE interfaces SET apply_error = ? WHERE id = ?",
                               [f"wireguard: writing {config_path(ctx, interface['name'])} failed: {error}",
                                interface_id])
            finally:
                db.conn.close()


class _FileContext:
    def __init__(self, db, settings):
        self.db, self.settings = db, settings


def flush_config_writes(timeout=10):
    """Wait until every scheduled config write is done (tests, benchmarks, shutdown)."""
    deadline = time.monotonic() + timeout
    with _writes_lock:
        while _writer is not None and time.monotonic() < deadline:
            _writes_lock.wait(timeout=0.05)


def managed_config_names(ctx):
    """Interface names with a config file the panel wrote (first line carries the mark)."""
    folder = Path(ctx.settings["WG_CONF_DIR"])
    names = []
    if not folder.is_dir():
        return names
    for path in sorted(folder.glob("*.conf")):
        try:
            with path.open() as handle:
                first = handle.readline()
        except OSError:
            continue
        if MANAGED_MARK in first and NAME.fullmatch(path.stem):
            names.append(path.stem)
    return names


# ------------------------------------------------------------------ commands

def _wg(ctx):
    return ctx.settings.get("WG_BIN", "wg")


def _ip(ctx):
    return ctx.settings.get("IP_BIN", "ip")


def _explain(error, interface=None):
    """Add what an admin needs to know to the usual wg/wireguard-go complaints."""
    text = f"{error.stderr} {error.reason}"
    hint = ""
    if "Address already in use" in text or "address already in use" in text:
        port = interface and interface.get("listen_port")
        hint = f"listen port {port}/udp is already taken by another program" if port else "the port is taken"
    elif "unix socket in use" in text or "UAPI listen error" in text:
        hint = "a wireguard-go interface with this name already runs (perhaps in another network namespace)"
    elif "Failed to create TUN device" in text or "/dev/net/tun" in text:
        hint = "wireguard-go could not create its TUN device (is /dev/net/tun available?)"
    elif "Protocol not supported" in text or "No such device" in text:
        hint = "the interface does not exist on the system"
    if hint:
        error = CommandError(error.argv, error.returncode, error.stderr, error.reason)
        error.args = (f"{error.describe()} ({hint})",)
    return error


def run(ctx, argv, interface=None, **kwargs):
    try:
        return ctx.runner.run(argv, **kwargs)
    except CommandError as error:
        raise _explain(error, interface) from None


def link(ctx, name):
    """The link as `ip -d link show` reports it (dict), or None if there is none."""
    result = ctx.runner.run([_ip(ctx), "-j", "-d", "link", "show", "dev", check_name(name)], check=False)
    if result.returncode != 0:
        if "does not exist" in result.stderr or "Cannot find device" in result.stderr:
            return None
        raise CommandError([_ip(ctx), "-j", "-d", "link", "show", "dev", name], result.returncode, result.stderr)
    try:
        entries = json.loads(result.stdout or "[]")
    except ValueError:
        raise WireGuardError(f"could not read `ip link show {name}` output") from None
    return entries[0] if entries else None


def addresses(ctx, name):
    """Global addresses on the link: {'10.8.0.1/24', 'fd42::1/64'}."""
    result = run(ctx, [_ip(ctx), "-j", "addr", "show", "dev", check_name(name)])
    found = set()
    for entry in json.loads(result.stdout or "[]"):
        for info in entry.get("addr_info", []):
            if info.get("scope") == "link" or info.get("family") not in ("inet", "inet6"):
                continue
            found.add(str(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")))
    return found


def desired_addresses(interface):
    return {str(ipaddress.ip_interface(a)) for a in wgconfig.interface_addresses(interface)}


# ------------------------------------------------------------------ status

def parse_dump(text):
    """`wg show <if> dump` -> (interface dict, {public_key: peer dict}).

    Private and preshared keys are part of the dump; callers that hand the
    result to a page use ``dump()``, which leaves them out.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise WireGuardError("`wg show dump` printed nothing")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise WireGuardError("unexpected `wg show dump` output")
    none = lambda v: None if v in ("(none)", "off", "") else v  # noqa: E731
    iface = {"private_key": none(head[0]), "public_key": none(head[1]),
             "listen_port": int(head[2]) if head[2].isdigit() else 0, "fwmark": none(head[3])}
    peers = {}
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != 8:
            raise WireGuardError("unexpected `wg show dump` peer line")
        allowed = none(fields[3])
        peers[fields[0]] = {
            "preshared_key": none(fields[1]),
            "endpoint": none(fields[2]),
            "allowed_ips": [a for a in allowed.split(",") if a] if allowed else [],
            "latest_handshake": int(fields[4]),
            "rx": int(fields[5]),
            "tx": int(fields[6]),
            "keepalive": int(fields[7]) if fields[7].isdigit() else 0,
        }
    return iface, peers


def show_dump(ctx, name):
    result = run(ctx, [_wg(ctx), "show", check_name(name), "dump"])
    return parse_dump(result.stdout)


def dump(ctx, ifname, now=None):
    """Per-peer status from one `wg show <if> dump`: {public_key: {endpoint, latest_handshake, rx, tx, online}}.

    ``rx`` is what the server received from the peer (the client's upload),
    ``tx`` what it sent; ``latest_handshake`` is unix time, 0 for never.
    """
    now = time.time() if now is None else now
    timeout = int(ctx.settings.get("ONLINE_TIMEOUT", 180))
    _iface, peers = show_dump(ctx, ifname)
    return {
        key: {
            "endpoint": peer["endpoint"],
            "latest_handshake": peer["latest_handshake"],
            "rx": peer["rx"],
            "tx": peer["tx"],
            "allowed_ips": peer["allowed_ips"],
            "online": is_online(peer["latest_handshake"], now, timeout),
        }
        for key, peer in peers.items()
    }


def is_online(latest_handshake, now, timeout):
    return bool(latest_handshake) and now - latest_handshake < timeout


# ------------------------------------------------------------------ peers

def peer_allowed_ips(client):
    return [str(ipaddress.ip_network(a, strict=False)) for a in wgconfig.client_addresses(client)]


def desired_peers(clients):
    return {c["public_key"]: {"preshared_key": c.get("preshared_key") or None,
                              "allowed_ips": sorted(peer_allowed_ips(c))}
            for c in clients if wgconfig.is_active(c)}


def live_peers(peers):
    return {key: {"preshared_key": p["preshared_key"],
                  "allowed_ips": sorted(str(ipaddress.ip_network(a, strict=False)) for a in p["allowed_ips"])}
            for key, p in peers.items()}


def set_peer(ctx, interface, client):
    """Add or update one peer; other peers are not touched."""
    name = check_name(interface["name"])
    psk = client.get("preshared_key")
    argv = [_wg(ctx), "set", name, "peer", _key(client["public_key"]),
            "preshared-key", "/dev/stdin" if psk else "/dev/null",
            "allowed-ips", ",".join(peer_allowed_ips(client))]
    endpoint = last_endpoint(client)
    if endpoint:
        # A resumed client still holds its old session, which the server
        # forgot with the peer; it would only notice after 15 s of unanswered
        # traffic.  Turning persistent keepalive on sends one keepalive at once,
        # so the server starts the handshake itself (off again right after, so
        # the live peer matches the database).
        argv += ["endpoint", endpoint, "persistent-keepalive", "1"]
    run(ctx, argv, interface, input=(_key(psk) + "\n") if psk else None)
    if endpoint:
        run(ctx, [_wg(ctx), "set", name, "peer", client["public_key"], "persistent-keepalive", "0"], interface)


def last_endpoint(client):
    """The client's last endpoint as the poller saw it ('203.0.113.5:41234', '[2001:db8::5]:41234'), or None."""
    value = client.get("endpoint")
    if not value or not isinstance(value, str):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def remove_peer(ctx, interface, public_key):
    name = check_name(interface["name"])
    run(ctx, [_wg(ctx), "set", name, "peer", _key(public_key), "remove"], interface)


def _key(value):
    # Keys reach argv (public) or stdin (preshared): 44 characters of base64, nothing else.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=", value):
        raise WireGuardError("refusing a malformed WireGuard key")
    return value


# ------------------------------------------------------------------ interface

def bring_up(ctx, interface, clients):
    """Make the live interface match the rows; returns a list of what changed.

    Creates the link if missing, sets addresses, MTU and state, then syncs
    key, port and peers with `wg syncconf` only if they differ.  A running
    interface is never recreated, so sessions survive.
    """
    name = check_name(interface["name"])
    changes = []
    current = link(ctx, name)
    if current is None:
        create_link(ctx, interface)
        changes.append(f"{name}: created ({backend(ctx)})")
        current = link(ctx, name) or {}
    elif not _is_wireguard(current):
        raise WireGuardError(f"{name} exists on the system but is not a WireGuard interface")

    have, want = addresses(ctx, name), desired_addresses(interface)
    for address in sorted(want - have):
        argv = [_ip(ctx), "address", "add", address, "dev", name]
        run(ctx, argv + (["nodad"] if ":" in address else []), interface)
        changes.append(f"{name}: address {address} added")
    for address in sorted(have - want):
        run(ctx, [_ip(ctx), "address", "del", address, "dev", name], interface)
        changes.append(f"{name}: address {address} removed")

    mtu = int(interface["mtu"])
    if current.get("mtu") != mtu:
        run(ctx, [_ip(ctx), "link", "set", "dev", name, "mtu", str(mtu)], interface)
        changes.append(f"{name}: MTU {mtu}")

    changes += sync_peers(ctx, interface, clients)

    if "UP" not in (current.get("flags") or []):
        run(ctx, [_ip(ctx), "link", "set", "dev", name, "up"], interface)
        changes.append(f"{name}: up")
        changes += call_back_clients(ctx, interface, clients)
    return changes


def call_back_clients(ctx, interface, clients):
    """After the interface was (re)created, start a handshake to every client with a known endpoint.

    Their apps still hold sessions the new interface never had; without this
    they notice only after 15 s of unanswered traffic, or minutes later when
    idle.  Two `wg addconf` calls whatever the number of clients: endpoints
    with keepalive on (which sends one at once), then keepalive off again.
    """
    name = check_name(interface["name"])
    known = [c for c in clients if wgconfig.is_active(c) and last_endpoint(c)]
    if not known:
        return []
    for keepalive in (1, 0):
        # A [Peer] section replaces the peer's allowed IPs, so they are repeated.
        text = "".join(f"[Peer]\nPublicKey = {_key(c['public_key'])}\n"
                       f"AllowedIPs = {', '.join(peer_allowed_ips(c))}\n"
                       + (f"Endpoint = {last_endpoint(c)}\n" if keepalive else "")
                       + f"PersistentKeepalive = {keepalive}\n\n" for c in known)
        run(ctx, [_wg(ctx), "addconf", name, "/dev/stdin"], interface, input=text)
    return [f"{name}: handshake started with {len(known)} client(s) at their last endpoint"]


def _is_wireguard(entry):
    kind = (entry.get("linkinfo") or {}).get("info_kind")
    return kind in ("wireguard", "tun")


def create_link(ctx, interface):
    name = check_name(interface["name"])
    if backend(ctx) == "kernel":
        run(ctx, [_ip(ctx), "link", "add", "dev", name, "type", "wireguard"], interface)
    else:
        # wireguard-go creates the TUN device and its control socket, then
        # daemonizes (its output goes to /dev/null), so this returns at once.
        run(ctx, [ctx.settings.get("WIREGUARD_GO_BIN", "wireguard-go"), name], interface)


def sync_peers(ctx, interface, clients):
    """`wg syncconf` from the database if key, port or peers differ; returns what changed."""
    name = check_name(interface["name"])
    live_iface, peers = show_dump(ctx, name)
    want = desired_peers(clients)
    have = live_peers(peers)
    changes = []
    if live_iface["private_key"] != interface["private_key"]:
        changes.append(f"{name}: private key set")
    if live_iface["listen_port"] != int(interface["listen_port"]):
        changes.append(f"{name}: listen port {interface['listen_port']}")
    added = [k for k in want if k not in have]
    removed = [k for k in have if k not in want]
    updated = [k for k in want if k in have and want[k] != have[k]]
    keepalive = [k for k in want if k in peers and peers[k]["keepalive"]]
    if added:
        changes.append(f"{name}: {len(added)} peer(s) added")
    if removed:
        changes.append(f"{name}: {len(removed)} peer(s) removed")
    if updated or keepalive:
        changes.append(f"{name}: {len(set(updated) | set(keepalive))} peer(s) updated")
    if changes:
        text = wgconfig.render_setconf(interface, clients)
        run(ctx, [_wg(ctx), "syncconf", name, "/dev/stdin"], interface, input=text)
    return changes


def take_down(ctx, name):
    """Delete the link (wireguard-go exits with it); returns what changed."""
    name = check_name(name)
    if link(ctx, name) is None:
        return []
    run(ctx, [_ip(ctx), "link", "del", "dev", name])
    return [f"{name}: taken down"]


# ------------------------------------------------------------------ forwarding

def _sysctl(ctx):
    return ctx.settings.get("SYSCTL_BIN", "sysctl")


def read_sysctl(ctx, key):
    return run(ctx, [_sysctl(ctx), "-n", key]).stdout.strip()


def ensure_sysctl(ctx, key, value):
    if read_sysctl(ctx, key) == str(value):
        return []
    run(ctx, [_sysctl(ctx), "-w", f"{key}={value}"])
    return [f"sysctl {key}={value}"]


def ensure_forwarding(ctx, interfaces):
    """IPv4 forwarding on; IPv6 too where an enabled interface has an IPv6 prefix.

    Turning IPv6 forwarding on makes Linux ignore router advertisements on
    every device whose accept_ra is 1, which would drop a SLAAC-configured
    uplink; those devices are set to 2 (accept even when forwarding) first.
    """
    enabled = [i for i in interfaces if i["enabled"]]
    if not enabled:
        return []
    changes = ensure_sysctl(ctx, "net.ipv4.ip_forward", 1)
    if any(i.get("address6") for i in enabled):
        from . import firewall
        for device in sorted({firewall.external_device(ctx, i, 6) for i in enabled if i.get("address6")} - {None}):
            key = f"net.ipv6.conf.{device.replace('.', '/')}.accept_ra"
            if read_sysctl(ctx, key) == "1":
                changes += ensure_sysctl(ctx, key, 2)
        changes += ensure_sysctl(ctx, "net.ipv6.conf.all.forwarding", 1)
    return changes


# ------------------------------------------------------------------ apply hooks

def client_changed(ctx, interface, client):
    """One client created, edited, suspended or resumed: only its peer changes live."""
    if not interface["enabled"]:
        schedule_config_write(ctx, interface)
        return []
    try:
        if wgconfig.is_active(client):
            set_peer(ctx, interface, client)
        else:
            remove_peer(ctx, interface, client["public_key"])
    except CommandError:
        # Interface missing (reboot, crash, never applied): bring the whole
        # interface up from the database instead; it raises if that fails too.
        if link(ctx, interface["name"]) is not None:
            raise
        return interface_changed(ctx, interface, _clients(ctx, interface))
    schedule_config_write(ctx, interface)
    return [f"{interface['name']}: peer {client['name']} {'set' if wgconfig.is_active(client) else 'removed'}"]


def client_removed(ctx, interface, client):
    if interface["enabled"]:
        try:
            remove_peer(ctx, interface, client["public_key"])
        except CommandError:
            # Only a missing interface (reboot, never applied) has no peer to remove; look only then,
            # so a delete costs one command.
            if link(ctx, interface["name"]) is not None:
                raise
    schedule_config_write(ctx, interface)
    return [f"{interface['name']}: peer {client['name']} removed"]


def apply_interface(ctx, interface, clients):
    """Config file, then the live interface: up with everything, or down if disabled."""
    changes = []
    if write_config(ctx, interface, clients):
        changes.append(f"{interface['name']}: {config_path(ctx, interface['name'])} written")
    if interface["enabled"]:
        changes += bring_up(ctx, interface, clients)
    else:
        changes += take_down(ctx, interface["name"])
    return changes


def interface_changed(ctx, interface, clients):
    return apply_interface(ctx, interface, clients) + ensure_forwarding(ctx, [interface])


def interface_removed(ctx, interface):
    changes = take_down(ctx, interface["name"])
    path = config_path(ctx, interface["name"])
    if path.exists():
        path.unlink()
        changes.append(f"{interface['name']}: {path} removed")
    return changes


def reconcile(ctx, interfaces):
    """Every interface as the database says; panel interfaces no longer in it go away."""
    from .apply import BackendErrors

    changes, errors = [], {}
    for interface, clients in interfaces:
        try:
            changes += apply_interface(ctx, interface, clients)
        except (CommandError, WireGuardError, OSError, ValueError) as error:
            errors[interface["name"]] = str(error)
    known = {interface["name"] for interface, _clients in interfaces}
    for name in managed_config_names(ctx):
        if name not in known:
            try:
                changes += interface_removed(ctx, {"name": name})
            except (CommandError, WireGuardError, OSError) as error:
                errors[None] = f"removing {name}: {error}"
    try:
        changes += ensure_forwarding(ctx, [i for i, _c in interfaces])
    except (CommandError, WireGuardError) as error:
        errors[None] = str(error)
    if errors:
        raise BackendErrors(errors, changes)
    return changes


def _clients(ctx, interface):
    return list(ctx.db.query("SELECT * FROM clients WHERE interface_id = ? ORDER BY ip_int", [interface["id"]]))


# ------------------------------------------------------------------ dashboard

def status_panel(ctx):
    """For the dashboard: which backend runs WireGuard, and whether every enabled interface is up."""
    if not ctx.live:
        return {"state": "warn", "detail": "SYSTEM_APPLY is 0: the panel leaves the live system alone."}
    kind = backend(ctx)
    label = "kernel module" if kind == "kernel" else "wireguard-go (userspace)"
    enabled = [row["name"] for row in ctx.db.query("SELECT name FROM interfaces WHERE enabled = 1 ORDER BY name")]
    down = [name for name in enabled if "UP" not in ((link(ctx, name) or {}).get("flags") or [])]
    if down:
        return {"state": "down", "detail": f"{label}; not running: {', '.join(down)}"}
    return {"state": "ok", "detail": f"{label}; {len(enabled)} interface(s) up"}

"""Import an existing wg-quick server (``/etc/wireguard/wgN.conf``) into the panel.

The interface is taken over as it is: same private key, same port, same
addresses, every peer with its public and preshared key and address, so
connected clients never notice (no handshake reset).  The live interface is
left running; the apply layer only adds what is missing.

Peers' private keys were never on the server, so imported clients have
``private_key`` NULL: they keep working, but their profile cannot be rebuilt.

Peer names come from the comments the common installers write:

    ### begin alice ###        PiVPN
    # BEGIN_PEER alice         wireguard-install (Nyr)
    ### Client alice           wireguard-install (angristan)
    # Name: alice              wireguard-ui
    # Client: alice (id)       wg-easy
    # alice                    by hand, just above [Peer] or as its first line
"""

import ipaddress
import re
from pathlib import Path

from . import keys, validation

# wg-quick keys the panel does not take over; each gets a note.
IGNORED_INTERFACE_KEYS = {
    "preup", "postup", "predown", "postdown", "table", "saveconfig", "fwmark",
}
NAME_PATTERNS = [
    re.compile(r"^###\s*begin\s+(?P<name>.+?)\s*###$", re.I),
    re.compile(r"^#\s*BEGIN_PEER\s+(?P<name>.+)$"),
    re.compile(r"^###\s*Client\s+(?P<name>.+)$", re.I),
    re.compile(r"^#\s*Name\s*:\s*(?P<name>.+)$", re.I),
    re.compile(r"^#\s*Client\s*:\s*(?P<name>.+?)(\s*\([^)]*\))?$", re.I),
    re.compile(r"^#\s*friendly_name\s*=\s*(?P<name>.+)$", re.I),
]
# Comments that are never a peer's name: end markers and wireguard-ui's other fields.
NOT_A_NAME = re.compile(
    r"^(###\s*end\b|#\s*END_PEER\b|#\s*(ID|Email|Telegram|Allocated IPs|Allowed IPs|Extra Allowed IPs|"
    r"Create Date|Update Date|Enabled)\s*:)", re.I)
GENERIC_NAME = re.compile(r"^#+\s*(?P<name>[\w.@+-][\w .@+-]{0,62})\s*$")


class ConfigImportError(Exception):
    """The file cannot be imported as it is; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _name_from_comments(comments):
    """The peer's name from the comments around its [Peer] header, or None."""
    for pattern in NAME_PATTERNS:
        for line in comments:
            match = pattern.match(line)
            if match:
                return match.group("name").strip()
    candidates = [line for line in comments if not NOT_A_NAME.match(line) and GENERIC_NAME.match(line)]
    if len(candidates) == 1:
        return GENERIC_NAME.match(candidates[0]).group("name").strip()
    return None


def _split_list(value):
    return [item.strip() for item in value.split(",") if item.strip()]


def parse(text, source="wg0.conf"):
    """Parse wg-quick text into {interface: {...}, peers: [...], notes: [...]}.

    Values are checked (keys, addresses, port) and every problem is
    collected, so the admin sees them all at once; raises ConfigImportError.
    """
    problems, notes = [], []
    interface, peers = None, []
    section, current = None, None
    pending_comments = []

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if "\x00" in raw:
            problems.append(f"{where}: NUL byte in the file")
            continue
        if not line:
            continue
        if line.startswith("#"):
            if current is not None and current.get("_keys_seen") is False:
                current["_comments"].append(line)
            else:
                pending_comments.append(line)
            continue
        if line.startswith("["):
            header = line.lower()
            if header == "[interface]":
                if interface is not None:
                    problems.append(f"{where}: a second [Interface] section")
                interface = current = {"_where": where, "_comments": [], "_keys_seen": False, "address": [],
                                       "dns": []}
                section = "interface"
            elif header == "[peer]":
                current = {"_where": where, "_comments": pending_comments, "_keys_seen": False,
                           "allowed_ips": []}
                peers.append(current)
                section = "peer"
            else:
                problems.append(f"{where}: unknown section {line}")
                section, current = None, None
            pending_comments = []
            continue
        name, sep, value = line.partition("=")
        if not sep:
            problems.append(f"{where}: expected Key = Value")
            continue
        # A '#' after a value starts a comment, as wg-quick reads it.
        value = value.split("#", 1)[0].strip()
        key = name.strip().lower()
        if current is None:
            problems.append(f"{where}: {name.strip()} outside any section")
            continue
        current["_keys_seen"] = True
        # Comments between the peer's keys belong to the next peer, not this one.
        pending_comments = []
        if section == "interface":
            _interface_key(current, key, name.strip(), value, where, problems, notes)
        else:
            _peer_key(current, key, name.strip(), value, where, problems, notes)

    if interface is None:
        problems.append(f"{source}: no [Interface] section")
        raise ConfigImportError(problems)
    result = _finish(interface, peers, source, problems, notes)
    if problems:
        raise ConfigImportError(problems)
    return result


def _interface_key(iface, key, name, value, where, problems, notes):
    if key == "privatekey":
        try:
            keys.decode_key(value)
            iface["private_key"] = value
        except ValueError as e:
            iface["_seen_private_key"] = True
            problems.append(f"{where}: PrivateKey: {e}")
    elif key == "listenport":
        if value.isdigit() and 1 <= int(value) <= 65535:
            iface["listen_port"] = int(value)
        else:
            problems.append(f"{where}: ListenPort must be a number from 1 to 65535")
    elif key == "address":
        for item in _split_list(value):
            try:
                iface["address"].append(ipaddress.ip_interface(item))
            except ValueError:
                problems.append(f"{where}: Address {item!r} is not an address with a prefix")
    elif key == "mtu":
        if value.isdigit() and 576 <= int(value) <= 9000:
            iface["mtu"] = int(value)
        else:
            problems.append(f"{where}: MTU must be a number from 576 to 9000")
    elif key == "dns":
        for item in _split_list(value):
            try:
                iface["dns"].append(str(ipaddress.ip_address(item)))
            except ValueError:
                notes.append(f"{where}: DNS search domain {item!r} is not imported")
    elif key in IGNORED_INTERFACE_KEYS:
        iface.setdefault("_ignored", []).append(name)
        if key == "postup":
            device = _nat_device(value)
            if device:
                iface["ext_device"] = device
    else:
        problems.append(f"{where}: unknown key {name} in [Interface]")


def _nat_device(command):
    """The outgoing device of a MASQUERADE rule in a PostUp line (iptables or nft), if any."""
    if "masquerade" not in command.lower():
        return None
    match = re.search(r"(?:-o|oifname)\s+\"?([A-Za-z0-9_.@-]{1,15})\"?", command)
    return match.group(1) if match else None


def _peer_key(peer, key, name, value, where, problems, notes):
    if key == "publickey":
        try:
            keys.decode_key(value)
            peer["public_key"] = value
        except ValueError as e:
            problems.append(f"{where}: PublicKey: {e}")
    elif key == "presharedkey":
        try:
            keys.decode_key(value)
            peer["preshared_key"] = value
        except ValueError as e:
            problems.append(f"{where}: PresharedKey: {e}")
    elif key == "allowedips":
        for item in _split_list(value):
            try:
                peer["allowed_ips"].append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                problems.append(f"{where}: AllowedIPs {item!r} is not a network")
    elif key == "endpoint":
        pass  # a server learns its clients' endpoints from their packets
    elif key == "persistentkeepalive":
        notes.append(f"{where}: PersistentKeepalive on the server side is not kept "
                     "(clients keep their own keepalive)")
    else:
        problems.append(f"{where}: unknown key {name} in [Peer]")


def _finish(iface, peers, source, problems, notes):
    where = iface["_where"]
    for required, label in (("private_key", "PrivateKey"), ("listen_port", "ListenPort")):
        if required not in iface and f"_seen_{required}" not in iface:
            problems.append(f"{where}: [Interface] has no {label}"
                            + (" (the panel needs a fixed port)" if required == "listen_port" else ""))
    v4 = [a for a in iface["address"] if a.version == 4]
    v6 = [a for a in iface["address"] if a.version == 6]
    if not v4:
        problems.append(f"{where}: [Interface] needs an IPv4 Address such as 10.8.0.1/24")
    elif v4[0].network.prefixlen > 30:
        problems.append(f"{where}: Address {v4[0]} leaves no room for clients")
    if len(v4) > 1 or len(v6) > 1:
        problems.append(f"{where}: the panel keeps one IPv4 and one IPv6 address per interface; "
                        f"this one has {', '.join(map(str, iface['address']))}")
    if iface.get("_ignored"):
        notes.append(f"{', '.join(sorted(set(iface['_ignored'])))} not imported: the panel sets up "
                     "NAT and forwarding itself (rules already loaded stay until reboot)")

    interface = {
        "private_key": iface.get("private_key"),
        "listen_port": iface.get("listen_port"),
        "address": str(v4[0]) if v4 else None,
        "address6": str(v6[0]) if v6 else None,
        "mtu": iface.get("mtu", 1420),
        "dns": ", ".join(iface["dns"]),
        "ext_device": iface.get("ext_device", ""),
    }
    if interface["private_key"]:
        interface["public_key"] = keys.public_key(interface["private_key"])
    net4 = v4[0].network if v4 else None
    net6 = v6[0].network if v6 else None

    result_peers, seen_keys, seen_ips = [], set(), set()
    for index, peer in enumerate(peers, 1):
        label = f"{peer['_where']} (peer {index})"
        if "public_key" not in peer:
            problems.append(f"{label}: no PublicKey")
            continue
        if peer["public_key"] in seen_keys:
            problems.append(f"{label}: the same PublicKey appears twice")
        if peer["public_key"] == interface.get("public_key"):
            problems.append(f"{label}: the peer has the interface's own key")
        seen_keys.add(peer["public_key"])
        hosts4 = [n for n in peer["allowed_ips"] if n.version == 4 and n.prefixlen == 32]
        hosts6 = [n for n in peer["allowed_ips"] if n.version == 6 and n.prefixlen == 128]
        routed = [n for n in peer["allowed_ips"] if n not in hosts4[:1] + hosts6[:1]]
        if not hosts4:
            problems.append(f"{label}: AllowedIPs has no single IPv4 address (x.x.x.x/32) for the client")
            continue
        ip = hosts4[0].network_address
        if routed:
            # Dropping a route would cut off the network behind that peer.
            problems.append(f"{label}: AllowedIPs also routes {', '.join(map(str, routed))}; the panel "
                            "gives a client one IPv4 and one IPv6 address, so this peer cannot be "
                            "imported without breaking it")
        if net4 and (ip not in net4 or ip in (net4.network_address, net4.broadcast_address)
                     or ip == v4[0].ip):
            problems.append(f"{label}: {ip} is not a client address inside {net4}")
        if hosts6 and net6 and hosts6[0].network_address not in net6:
            problems.append(f"{label}: {hosts6[0].network_address} is outside {net6}")
        if hosts6 and not net6:
            problems.append(f"{label}: the peer has an IPv6 address but the interface has none")
        if ip in seen_ips:
            problems.append(f"{label}: {ip} is used by two peers")
        seen_ips.add(ip)
        result_peers.append({
            "name": _name_from_comments(peer["_comments"]),
            "public_key": peer["public_key"],
            "preshared_key": peer.get("preshared_key"),
            "ip": str(ip),
            "ip6": str(hosts6[0].network_address) if hosts6 else None,
        })
    return {"interface": interface, "peers": result_peers, "notes": notes}


def parse_file(path):
    path = Path(path)
    name = path.name[:-len(".conf")] if path.name.endswith(".conf") else path.name
    if not validation.INTERFACE_NAME.fullmatch(name):
        # Renaming a live interface would drop its tunnels.
        raise ConfigImportError([f"{path.name}: the panel names interfaces wgN (wg0, wg1, ...); "
                                 f"rename the interface and its file first"])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigImportError([f"cannot read {path}: {e}"]) from None
    parsed = parse(text, source=path.name)
    parsed["interface"]["name"] = name
    return parsed


# ------------------------------------------------------------- into the panel

def _clean_name(name):
    """A comment's name made fit for a client name (letters, digits, . _ - @)."""
    if not name:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9_.@-]+", "-", name).strip("-._@")[:63]
    return cleaned or None


def plan_names(db, parsed):
    """The peers with the client names they will get: from comments, else <iface>-<ip>, made unique."""
    taken = {row["name"] for row in db.query("SELECT name FROM clients")}
    taken |= {row["username"] for row in db.query("SELECT username FROM clients")}
    planned = []
    for peer in parsed["peers"]:
        base = _clean_name(peer["name"]) or f"{parsed['interface']['name']}-{peer['ip'].replace('.', '-')}"
        name, n = base, 2
        while name.lower() in {t.lower() for t in taken}:
            name = f"{base[:58]}-{n}"
            n += 1
        taken.add(name)
        planned.append({**peer, "name": name})
    return planned


def endpoint_from_settings(settings):
    """The host of PUBLIC_URL, the natural endpoint for imported interfaces, or ''."""
    from urllib.parse import urlsplit
    url = settings.get("PUBLIC_URL", "")
    return (urlsplit(url).hostname or "") if url else ""


def import_parsed(db, parsed, endpoint):
    """Create the interface and one client per peer, all in one transaction.

    Returns {interface: row, clients: [rows]}.  Raises ValidationError (a
    field is refused, e.g. the pool overlaps another interface) or
    ConfigImportError; either way nothing is written.
    """
    from ..db import transaction
    from . import clients, interfaces

    iface = parsed["interface"]
    with transaction(db):
        if interfaces.get(db, iface["name"]):
            raise ConfigImportError([f"the panel already has an interface named {iface['name']}"])
        known = [p["public_key"] for p in parsed["peers"]
                 if db.execute("SELECT 1 FROM clients WHERE public_key = ?", [p["public_key"]]).fetchone()]
        if known:
            raise ConfigImportError([f"the panel already has a client with the key {k}" for k in known])
        interface = interfaces.create(db, {
            "name": iface["name"], "private_key": iface["private_key"], "address": iface["address"],
            "address6": iface["address6"] or "", "listen_port": iface["listen_port"], "endpoint": endpoint,
            "mtu": iface["mtu"], "dns": iface["dns"] or interfaces.DEFAULTS["dns"],
            "ext_device": iface["ext_device"], "label": f"imported from {iface['name']}.conf",
        }, reserved_ports=set())  # the port is already in use by this very interface
        created = []
        for peer in plan_names(db, parsed):
            row = clients.create(db, {"interface_id": interface["id"], "name": peer["name"], "ip": peer["ip"],
                                      "ip6": peer["ip6"] or "", "note": "imported"})
            # create() makes fresh keys; the peer keeps its own, and its private
            # key is unknown.  An auto-assigned IPv6 would change the live peer.
            db.execute("UPDATE clients SET private_key = NULL, public_key = ?, preshared_key = ?, ip6 = ? "
                       "WHERE id = ?", [peer["public_key"], peer["preshared_key"], peer["ip6"], row["id"]])
            created.append(clients.get(db, row["id"]))
    return {"interface": interface, "clients": created}


def keep_original(path):
    """Copy the imported file to <file>.pre-puqvpn (once) before the panel rewrites it."""
    import shutil
    path = Path(path)
    saved = path.with_name(path.name + ".pre-puqvpn")
    if saved.exists():
        return None
    shutil.copy2(path, saved)
    return saved


def take_over(ctx, interface_id):
    """Apply the imported interface to the live system. Returns an error message or None.

    The apply layer finds the interface already up with the same key, port
    and peers, so it changes nothing that would reset a session.
    """
    from . import apply
    from .system import CommandError

    try:
        apply.interface_changed(ctx, interface_id)
    except (CommandError, OSError, ValueError) as e:
        return str(e)
    row = ctx.db.execute("SELECT apply_error FROM interfaces WHERE id = ?", [interface_id]).fetchone()
    return row[0] if row else None

"""WireGuard interfaces in the database: create, edit, enable, delete."""

import ipaddress
import sqlite3

from ..db import transaction
from . import keys, validation
from .validation import Checker, ValidationError
from .util import now_iso

# Form fields an admin may set; name and keys are fixed once created.
EDITABLE = ("label", "address", "address6", "listen_port", "endpoint", "ext_device", "nat",
            "client_to_client", "dns", "mtu", "keepalive", "allowed_ips",
            "default_down_mbit", "default_up_mbit", "ikev2_enabled", "conn_logging", "enabled")

DEFAULTS = {
    "label": "", "address6": "", "ext_device": "", "nat": True, "client_to_client": False,
    "dns": "1.1.1.1, 1.0.0.1", "mtu": "1420", "keepalive": "25",
    "allowed_ips": "0.0.0.0/0, ::/0", "default_down_mbit": "0", "default_up_mbit": "0",
    "ikev2_enabled": False, "conn_logging": False, "enabled": True,
}


def get(db, key):
    """An interface by id or name, or None."""
    column = "id" if isinstance(key, int) or str(key).isdigit() else "name"
    return next(db.query(f"SELECT * FROM interfaces WHERE {column} = ?", [key]), None)


def list_all(db):
    return list(db.query("""
        SELECT i.*, count(c.id) AS client_count,
               sum(c.suspended_reason IS NULL) AS active_count
        FROM interfaces i LEFT JOIN clients c ON c.interface_id = i.id
        GROUP BY i.id ORDER BY i.name"""))


def next_free_name(db):
    taken = {row["name"] for row in db.query("SELECT name FROM interfaces")}
    return next(f"wg{n}" for n in range(100000) if f"wg{n}" not in taken)


def next_free_port(db, start=51820):
    taken = {row["listen_port"] for row in db.query("SELECT listen_port FROM interfaces")}
    return next(p for p in range(start, 65536) if p not in taken)


def _clean(db, data, current=None, reserved_ports=validation.RESERVED_PORTS):
    """Validate form/JSON data; returns the clean column values. Missing keys keep current values."""
    merged = dict(DEFAULTS) if current is None else dict(current)
    merged.update({k: v for k, v in data.items() if k in EDITABLE or k in ("name", "private_key")})
    check = Checker()
    clean = {
        "label": check.field("label", validation.label, merged.get("label")),
        "address": check.field("address", validation.gateway4, merged.get("address")),
        "address6": check.field("address6", validation.gateway6, merged.get("address6")),
        "listen_port": check.field("listen_port", validation.port, merged.get("listen_port"), reserved_ports),
        "endpoint": check.field("endpoint", validation.host, merged.get("endpoint")),
        "ext_device": check.field("ext_device", validation.device_name, merged.get("ext_device")),
        "nat": validation.boolean(merged.get("nat")),
        "client_to_client": validation.boolean(merged.get("client_to_client")),
        "dns": check.field("dns", validation.dns_servers, merged.get("dns")),
        "mtu": check.field("mtu", validation.mtu, merged.get("mtu")),
        "keepalive": check.field("keepalive", validation.keepalive, merged.get("keepalive")),
        "allowed_ips": check.field("allowed_ips", validation.cidr_list, merged.get("allowed_ips")),
        "default_down_mbit": check.field("default_down_mbit", validation.mbit, merged.get("default_down_mbit")),
        "default_up_mbit": check.field("default_up_mbit", validation.mbit, merged.get("default_up_mbit")),
        "ikev2_enabled": validation.boolean(merged.get("ikev2_enabled")),
        "conn_logging": validation.boolean(merged.get("conn_logging")),
        "enabled": validation.boolean(merged.get("enabled")),
    }
    if current is None:
        clean["name"] = check.field("name", validation.interface_name, merged.get("name") or next_free_name(db))
        if merged.get("private_key"):
            clean["private_key"] = check.field("private_key", validation.wg_key, merged["private_key"])
    for flag in ("nat", "client_to_client", "ikev2_enabled", "conn_logging", "enabled"):
        clean[flag] = int(clean[flag])

    others = [i for i in db.query("SELECT * FROM interfaces") if current is None or i["id"] != current["id"]]
    if clean["address"]:
        pool = ipaddress.IPv4Interface(clean["address"]).network
        for other in others:
            if pool.overlaps(ipaddress.IPv4Interface(other["address"]).network):
                check.error("address", f"overlaps the pool of {other['name']} ({other['address']})")
    if clean["address6"]:
        pool6 = ipaddress.IPv6Interface(clean["address6"]).network
        for other in others:
            if other["address6"] and pool6.overlaps(ipaddress.IPv6Interface(other["address6"]).network):
                check.error("address6", f"overlaps the IPv6 pool of {other['name']}")
    if clean["listen_port"] and any(o["listen_port"] == clean["listen_port"] for o in others):
        check.error("listen_port", f"port {clean['listen_port']} is used by another interface")
    if current is None and clean.get("name") and get(db, clean["name"]):
        check.error("name", f"{clean['name']} already exists")
    if current is not None and clean["address"]:
        _check_clients_fit(db, current, clean, check)
    check.done()
    return clean


def _check_clients_fit(db, current, clean, check):
    """A pool may change only if every client's address still fits in it."""
    iface = ipaddress.IPv4Interface(clean["address"])
    outside = [c["name"] for c in db.query("SELECT name, ip FROM clients WHERE interface_id = ?", [current["id"]])
               if ipaddress.IPv4Address(c["ip"]) not in iface.network
               or c["ip"] in (str(iface.ip), str(iface.network.broadcast_address))]
    if outside:
        check.error("address", f"{len(outside)} client(s) would fall outside the pool, e.g. {outside[0]}")
    if current["address6"] and clean["address6"] != current["address6"]:
        has_v6 = next(db.query("SELECT 1 FROM clients WHERE interface_id = ? AND ip6 IS NOT NULL LIMIT 1",
                               [current["id"]]), None)
        if has_v6:
            check.error("address6", "clients have IPv6 addresses in the current prefix; remove them first")


def create(db, data, reserved_ports=validation.RESERVED_PORTS):
    """Create an interface from form/JSON data; keys are generated unless a private key is imported."""
    with transaction(db):
        clean = _clean(db, data, reserved_ports=reserved_ports)
        private = clean.pop("private_key", None) or keys.generate_private_key()
        stamp = now_iso()
        clean.update(private_key=private, public_key=keys.public_key(private),
                     created_at=stamp, updated_at=stamp)
        columns = ", ".join(clean)
        try:
            cursor = db.execute(f"INSERT INTO interfaces ({columns}) VALUES ({', '.join('?' * len(clean))})",
                                list(clean.values()))
        except sqlite3.IntegrityError as error:
            raise ValidationError(_integrity_fields(error)) from None
        return get(db, cursor.lastrowid)


def update(db, interface_id, data, reserved_ports=validation.RESERVED_PORTS):
    """Edit an interface; returns (old_row, new_row)."""
    with transaction(db):
        current = get(db, interface_id)
        if current is None:
            raise LookupError("no such interface")
        clean = _clean(db, data, current, reserved_ports=reserved_ports)
        clean["updated_at"] = now_iso()
        try:
            db.execute(f"UPDATE interfaces SET {', '.join(f'{k} = ?' for k in clean)} WHERE id = ?",
                       [*clean.values(), current["id"]])
        except sqlite3.IntegrityError as error:
            raise ValidationError(_integrity_fields(error)) from None
        return current, get(db, current["id"])


def set_enabled(db, interface_id, enabled):
    with transaction(db):
        db.execute("UPDATE interfaces SET enabled = ?, updated_at = ? WHERE id = ?",
                   [int(bool(enabled)), now_iso(), interface_id])
        return get(db, interface_id)


def delete(db, interface_id):
    """Delete an interface and (by cascade) its clients; returns the row as it was."""
    with transaction(db):
        current = get(db, interface_id)
        if current is None:
            raise LookupError("no such interface")
        db.execute("DELETE FROM interfaces WHERE id = ?", [current["id"]])
        return current


def set_apply_error(db, interface_id, message):
    with transaction(db):
        db.execute("UPDATE interfaces SET apply_error = ? WHERE id = ?", [message, interface_id])


def _integrity_fields(error):
    text = str(error)
    if "listen_port" in text:
        return {"listen_port": "this port is used by another interface"}
    if "name" in text:
        return {"name": "an interface with this name already exists"}
    return {"__all__": "the change conflicts with existing data"}

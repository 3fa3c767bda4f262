"""Port forwards: an external port and protocol of the server, DNAT'ed to a client's address and port.

The rules live in the firewall backend's table; this module keeps the rows.
Ports the server itself needs (SSH, DNS, the panel, WireGuard and IKE) are
refused so a forward can never lock the admin out or hijack a tunnel.
"""

import sqlite3

from ..db import transaction
from . import validation
from .validation import Checker, ValidationError

PROTOCOLS = ("tcp", "udp")
ALWAYS_RESERVED = {"tcp": {22, 53}, "udp": {53, 500, 4500}}


def list_for_interface(db, interface_id):
    return list(db.query("""
        SELECT f.*, c.name AS client_name, c.ip AS client_ip, c.suspended_reason
        FROM port_forwards f JOIN clients c ON c.id = f.client_id
        WHERE f.interface_id = ? ORDER BY f.proto, f.ext_port""", [interface_id]))


def get(db, forward_id):
    return next(db.query("SELECT * FROM port_forwards WHERE id = ?", [forward_id]), None)


def reserved_ports(db, panel_port=None):
    """{proto: ports} a forward may not take."""
    reserved = {proto: set(ports) for proto, ports in ALWAYS_RESERVED.items()}
    if panel_port:
        reserved["tcp"].add(int(panel_port))
    reserved["udp"] |= {row["listen_port"] for row in db.query("SELECT listen_port FROM interfaces")}
    return reserved


def create(db, interface_id, data, panel_port=None):
    """Add a forward from form/JSON data {client_id, proto, ext_port, dest_port}; returns the row."""
    with transaction(db):
        check = Checker()
        proto = str(data.get("proto") or "").strip().lower()
        if proto not in PROTOCOLS:
            check.error("proto", "choose tcp or udp")
        client = None
        client_id = str(data.get("client_id") or "").strip()
        if client_id.isdigit():
            client = next(db.query("SELECT * FROM clients WHERE id = ? AND interface_id = ?",
                                   [int(client_id), interface_id]), None)
        if client is None:
            check.error("client_id", "choose a client of this interface")
        reserved = reserved_ports(db, panel_port).get(proto, set())
        ext_port = check.field("ext_port", validation.port, data.get("ext_port"), reserved)
        dest_port = check.field("dest_port", validation.port, data.get("dest_port") or data.get("ext_port"), set())
        if ext_port and proto in PROTOCOLS:
            taken = next(db.query("SELECT f.id, c.name FROM port_forwards f JOIN clients c ON c.id = f.client_id "
                                  "WHERE f.proto = ? AND f.ext_port = ?", [proto, ext_port]), None)
            if taken:
                check.error("ext_port", f"{proto}/{ext_port} already goes to {taken['name']}")
        check.done()
        try:
            cursor = db.execute("INSERT INTO port_forwards (interface_id, client_id, proto, ext_port, dest_port) "
                                "VALUES (?, ?, ?, ?, ?)", [interface_id, client["id"], proto, ext_port, dest_port])
        except sqlite3.IntegrityError:
            raise ValidationError({"ext_port": f"{proto}/{ext_port} is already forwarded"}) from None
        return get(db, cursor.lastrowid)


def delete(db, forward_id):
    """Remove a forward; returns the row as it was."""
    with transaction(db):
        row = get(db, forward_id)
        if row is None:
            raise LookupError("no such port forward")
        db.execute("DELETE FROM port_forwards WHERE id = ?", [forward_id])
        return row

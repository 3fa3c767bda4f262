"""VPN clients in the database: create, edit, suspend, resume, delete, list.

A client's tunnel IPv4 address is the lowest free one in its interface's
pool unless the admin picks one.  ``UNIQUE(interface_id, ip)`` plus a write
transaction (BEGIN IMMEDIATE) make double allocation impossible even when
many requests create clients at once.
"""

import ipaddress
import sqlite3

from ..db import transaction
from . import interfaces, keys, validation, wgconfig
from .util import generate_password, now_iso, today
from .validation import Checker, FieldError, ValidationError

EDITABLE = ("name", "ip", "ip6", "username", "password", "down_mbit", "up_mbit",
            "expires_at", "quota_gb", "quota_reset_day", "note")

SORTS = {"name": "c.name", "ip": "c.ip_int", "created": "c.id", "traffic": "c.rx_bytes + c.tx_bytes",
         "handshake": "c.last_handshake", "expires": "c.expires_at"}

STATUSES = ("active", "suspended", "expired", "quota", "online", "offline")


class PoolFullError(ValidationError):
    def __init__(self, interface):
        super().__init__({"ip": f"the pool of {interface['name']} ({interface['address']}) is full"})


def get(db, key):
    """A client by id or name, or None."""
    column = "id" if isinstance(key, int) else "name"
    return next(db.query(f"SELECT * FROM clients WHERE {column} = ?", [key]), None)


def get_by_username(db, username):
    return next(db.query("SELECT * FROM clients WHERE username = ?", [username]), None)


def for_interface(db, interface_id):
    return list(db.query("SELECT * FROM clients WHERE interface_id = ? ORDER BY ip_int", [interface_id]))


def _given(value):
    """Whether a field was filled in; its own check (which may refuse it) comes later."""
    return value is not None and bool(str(value).strip(" \t"))


def _pool(interface):
    return ipaddress.IPv4Interface(interface["address"])


def free_ips(db, interface, limit=1):
    """The lowest free addresses of the pool (not network, broadcast or gateway)."""
    gateway = _pool(interface)
    network = gateway.network
    # Plain tuples: building a dict per row was most of the cost at 10,000 clients.
    taken = {ip for (ip,) in db.conn.execute(
        "SELECT ip_int FROM clients WHERE interface_id = ?", [interface["id"]])}
    taken.add(int(gateway.ip))
    found = []
    first, last = int(network.network_address) + 1, int(network.broadcast_address) - 1
    candidate = first
    while candidate <= last and len(found) < limit:
        if candidate not in taken:
            found.append(str(ipaddress.IPv4Address(candidate)))
        candidate += 1
    return found


def _check_ip(db, interface, value, client_id=None):
    address = validation.ipv4_address(value)
    gateway = _pool(interface)
    network = gateway.network
    if address not in network:
        raise FieldError(f"must be inside the pool {network}")
    if address == network.network_address:
        raise FieldError("the network address cannot be used")
    if address == network.broadcast_address:
        raise FieldError("the broadcast address cannot be used")
    if address == gateway.ip:
        raise FieldError("that is the gateway address")
    other = next(db.query("SELECT name FROM clients WHERE interface_id = ? AND ip_int = ? AND id IS NOT ?",
                          [interface["id"], int(address), client_id]), None)
    if other:
        raise FieldError(f"{address} is taken by {other['name']}")
    return str(address)


def _check_ip6(db, interface, value, client_id=None):
    if not validation._text(value):
        return None
    if not interface.get("address6"):
        raise FieldError("the interface has no IPv6 prefix")
    address = validation.ipv6_address(value)
    gateway = ipaddress.IPv6Interface(interface["address6"])
    if address not in gateway.network:
        raise FieldError(f"must be inside {gateway.network}")
    if address in (gateway.ip, gateway.network.network_address):
        raise FieldError("that address is reserved for the gateway")
    other = next(db.query("SELECT name FROM clients WHERE interface_id = ? AND ip6 = ? AND id IS NOT ?",
                          [interface["id"], str(address), client_id]), None)
    if other:
        raise FieldError(f"{address} is taken by {other['name']}")
    return str(address)


def _auto_ip6(db, interface, ip):
    """The IPv6 twin of an IPv4 address: the same host number in the IPv6 prefix."""
    if not interface.get("address6"):
        return None
    gateway6 = ipaddress.IPv6Interface(interface["address6"])
    host = int(ipaddress.IPv4Address(ip)) - int(_pool(interface).network.network_address)
    candidate = gateway6.network.network_address + host
    if candidate in gateway6.network and candidate != gateway6.ip:
        taken = next(db.query("SELECT 1 FROM clients WHERE interface_id = ? AND ip6 = ?",
                              [interface["id"], str(candidate)]), None)
        if not taken:
            return str(candidate)
    return None


def _clean(db, interface, data, current=None):
    merged = {"down_mbit": "0", "up_mbit": "0", "quota_gb": "0", "quota_reset_day": "1", "note": ""}
    if current is not None:
        merged.update(current)
    merged.update({k: v for k, v in data.items() if k in EDITABLE})
    client_id = current["id"] if current else None
    check = Checker()
    clean = {
        "name": check.field("name", validation.client_name, merged.get("name")),
        "down_mbit": check.field("down_mbit", validation.mbit, merged.get("down_mbit")),
        "up_mbit": check.field("up_mbit", validation.mbit, merged.get("up_mbit")),
        "expires_at": check.field("expires_at", validation.date, merged.get("expires_at")),
        "quota_gb": check.field("quota_gb", validation.gigabytes, merged.get("quota_gb")),
        "quota_reset_day": check.field("quota_reset_day", validation.integer, merged.get("quota_reset_day") or "1",
                                       1, 28, "the reset day"),
        "note": check.field("note", validation.note, merged.get("note")),
    }
    if _given(merged.get("ip")):
        clean["ip"] = check.field("ip", _check_ip, db, interface, merged["ip"], client_id)
    elif current is None:
        free = free_ips(db, interface)
        if not free:
            raise PoolFullError(interface)
        clean["ip"] = free[0]
    else:
        check.error("ip", "an address is required")
    if "ip6" in data or current is None:
        clean["ip6"] = check.field("ip6", _check_ip6, db, interface, merged.get("ip6"), client_id)
        if current is None and clean["ip6"] is None and not _given(merged.get("ip6")) and clean["ip"]:
            clean["ip6"] = _auto_ip6(db, interface, clean["ip"])
    username = merged.get("username") or (clean["name"] if current is None else None)
    clean["username"] = check.field("username", validation.username, username)
    if current is None or _given(data.get("password")):
        password = (merged.get("password") if _given(merged.get("password")) else None) if current is None \
            else data.get("password")
        clean["password"] = check.field("password", validation.password, password or generate_password())
    if clean["name"]:
        other = next(db.query("SELECT 1 FROM clients WHERE name = ? AND id IS NOT ?", [clean["name"], client_id]), None)
        if other:
            check.error("name", f"a client named {clean['name']} already exists")
    if clean["username"]:
        other = next(db.query("SELECT 1 FROM clients WHERE username = ? AND id IS NOT ?",
                              [clean["username"], client_id]), None)
        if other:
            check.error("username", f"the username {clean['username']} is taken")
    check.done()
    clean["ip_int"] = int(ipaddress.IPv4Address(clean["ip"]))
    return clean


def create(db, data):
    """Create a client from form/JSON data: {'interface': name or id, 'name': ..., optional fields}."""
    for attempt in range(5):
        try:
            return _create_once(db, data)
        except sqlite3.IntegrityError as error:
            # Lost a race for the same address between check and insert: try the next one.
            if "ip" not in str(error) or data.get("ip") or attempt == 4:
                raise ValidationError(_integrity_fields(error)) from None


def _create_once(db, data):
    with transaction(db):
        interface = interfaces.get(db, data.get("interface") or data.get("interface_id") or "")
        if interface is None:
            raise ValidationError({"interface": "choose an existing interface"})
        clean = _clean(db, interface, data)
        private = data.get("private_key")
        if _given(private):
            try:
                private = validation.wg_key(private)
            except FieldError as error:
                raise ValidationError({"private_key": str(error)}) from None
        else:
            private = keys.generate_private_key()
        stamp = now_iso()
        clean.update(
            interface_id=interface["id"], private_key=private, public_key=keys.public_key(private),
            preshared_key=keys.generate_preshared_key(), created_at=stamp, updated_at=stamp,
            period_start=today().isoformat(),
        )
        cursor = db.execute(f"INSERT INTO clients ({', '.join(clean)}) VALUES ({', '.join('?' * len(clean))})",
                            list(clean.values()))
        return get(db, cursor.lastrowid)


def update(db, client_id, data):
    """Edit a client; returns (old_row, new_row)."""
    with transaction(db):
        current = get(db, client_id)
        if current is None:
            raise LookupError("no such client")
        interface = interfaces.get(db, current["interface_id"])
        clean = _clean(db, interface, data, current)
        clean["updated_at"] = now_iso()
        try:
            db.execute(f"UPDATE clients SET {', '.join(f'{k} = ?' for k in clean)} WHERE id = ?",
                       [*clean.values(), current["id"]])
        except sqlite3.IntegrityError as error:
            raise ValidationError(_integrity_fields(error)) from None
        return current, get(db, current["id"])


def set_password(db, client_id, password=None):
    """Set (or generate) the IKEv2 password; returns the new password."""
    password = validation.password(password) if password else generate_password()
    with transaction(db):
        db.execute("UPDATE clients SET password = ?, updated_at = ? WHERE id = ?", [password, now_iso(), client_id])
    return password


def suspend(db, client_id, reason="admin"):
    with transaction(db):
        db.execute("UPDATE clients SET suspended_reason = ?, suspended_at = ?, updated_at = ? "
                   "WHERE id = ? AND suspended_reason IS NULL", [reason, now_iso(), now_iso(), client_id])
        return get(db, client_id)


def resume(db, client_id, expires_at=None):
    """Resume a suspended client. An expired one needs a new expiry date (or none)."""
    with transaction(db):
        client = get(db, client_id)
        if client is None:
            raise LookupError("no such client")
        updates = {"suspended_reason": None, "suspended_at": None, "updated_at": now_iso()}
        if expires_at is not None:
            updates["expires_at"] = validation.date(expires_at, allow_past=False) if expires_at else None
        if client["suspended_reason"] == "expired" and expires_at is None:
            raise ValidationError({"expires_at": "this client expired: give a new expiry date, or clear it"})
        if client["suspended_reason"] == "quota":
            updates.update(period_rx_bytes=0, period_tx_bytes=0, period_start=today().isoformat())
        db.execute(f"UPDATE clients SET {', '.join(f'{k} = ?' for k in updates)} WHERE id = ?",
                   [*updates.values(), client["id"]])
        return get(db, client["id"])


def delete(db, client_id):
    """Delete a client; returns the row as it was."""
    with transaction(db):
        current = get(db, client_id)
        if current is None:
            raise LookupError("no such client")
        db.execute("DELETE FROM clients WHERE id = ?", [current["id"]])
        return current


def wireguard_profile(db, interface, client):
    """The .conf a user downloads: the interface's DNS, or the panel's resolver when it is on."""
    from .resolver import effective_dns
    return wgconfig.render_client_config(interface, client, dns=effective_dns(db, interface))


def status(client, now, online_timeout):
    """One word for the list: suspended reasons first, then online/offline."""
    if client["suspended_reason"]:
        return {"admin": "suspended"}.get(client["suspended_reason"], client["suspended_reason"])
    if client.get("last_handshake") and now - client["last_handshake"] < online_timeout:
        return "online"
    return "offline"


def search(db, interface_id=None, q="", status=None, sort="name", descending=False,
           page=1, per_page=50, now=None, online_timeout=180):
    """One page of clients matching the filters; returns (rows, total)."""
    where, params = [], []
    if interface_id:
        where.append("c.interface_id = ?")
        params.append(interface_id)
    q = (q or "").strip()
    if q:
        where.append("(c.name LIKE ? ESCAPE '\\' OR c.ip LIKE ? ESCAPE '\\' "
                     "OR c.username LIKE ? ESCAPE '\\' OR c.note LIKE ? ESCAPE '\\')")
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params += [like] * 4
    if status in ("suspended", "expired", "quota"):
        where.append("c.suspended_reason = ?")
        params.append({"suspended": "admin"}.get(status, status))
    elif status == "active":
        where.append("c.suspended_reason IS NULL")
    elif status in ("online", "offline") and now is not None:
        # Like status(): a suspended client is neither online nor offline.
        where.append("c.suspended_reason IS NULL")
        where.append("c.last_handshake > ?" if status == "online"
                     else "(c.last_handshake IS NULL OR c.last_handshake <= ?)")
        params.append(now - online_timeout)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = next(db.query(f"SELECT count(*) AS n FROM clients c {clause}", params))["n"]
    order = SORTS.get(sort, "c.name") + (" DESC" if descending else "")
    per_page = max(1, min(int(per_page), 500))
    page = max(1, int(page))
    rows = list(db.query(
        f"SELECT c.*, i.name AS interface_name FROM clients c JOIN interfaces i ON i.id = c.interface_id "
        f"{clause} ORDER BY {order}, c.id LIMIT ? OFFSET ?", [*params, per_page, (page - 1) * per_page]))
    return rows, total


def counts(db, now=None, online_timeout=180):
    row = next(db.query("""
        SELECT count(*) AS total,
               sum(suspended_reason IS NULL) AS active,
               sum(suspended_reason = 'admin') AS suspended,
               sum(suspended_reason = 'expired') AS expired,
               sum(suspended_reason = 'quota') AS quota,
               sum(suspended_reason IS NULL AND last_handshake > ?) AS online
        FROM clients""", [(now or 0) - online_timeout]))
    return {k: row[k] or 0 for k in row}


def _integrity_fields(error):
    text = str(error)
    if "clients.ip6" in text:
        return {"ip6": "this IPv6 address is taken"}
    if "clients.interface_id, clients.ip" in text or "clients.ip" in text:
        return {"ip": "this address is taken"}
    if "clients.name" in text:
        return {"name": "a client with this name already exists"}
    if "clients.username" in text:
        return {"username": "this username is taken"}
    if "public_key" in text:
        return {"private_key": "a client with this key already exists"}
    return {"__all__": "the change conflicts with existing data"}

"""Seed a database with many clients at once, for the client-list benchmark and scale tests.

Going through services.clients.create() for each client costs a transaction
and a free-address scan apiece; one executemany() in one transaction makes
10,000 rows in about a second.  Every row is still valid: real X25519 key
pairs, unique names, usernames and addresses inside the pool.
"""

import ipaddress
import time

from puqvpn.db import transaction
from puqvpn.services import interfaces, keys

# A /18 pool has room for 16,381 clients.
INTERFACE = {"name": "wg0", "label": "Scale", "address": "10.8.0.1/18", "listen_port": "51820",
             "endpoint": "vpn.example.com", "dns": "1.1.1.1"}

COLUMNS = ("interface_id", "name", "ip", "ip_int", "private_key", "public_key", "preshared_key", "username",
           "password", "down_mbit", "up_mbit", "expires_at", "quota_gb", "note", "suspended_reason",
           "suspended_at", "rx_bytes", "tx_bytes", "last_handshake", "created_at", "updated_at", "period_start")


def client_row(interface, number, now):
    """The seeded client number ``number`` (1-based): a fixed mix of states, so tests can predict results."""
    network = ipaddress.IPv4Interface(interface["address"]).network
    ip = network.network_address + 1 + number          # .1 is the gateway
    private = keys.generate_private_key()
    suspended, expires, quota, handshake = None, None, 0, None
    if number % 10 == 3:
        suspended = "admin"
    elif number % 25 == 7:
        suspended, expires = "expired", "2025-01-31"
    elif number % 40 == 11:
        suspended, quota = "quota", 10
    elif number % 4 == 0:
        handshake = now - number % 60                   # online
    elif number % 4 == 1:
        handshake = now - 3600                          # seen an hour ago: offline
    if suspended is None and number % 9 == 5:
        expires = "2030-06-30"
    stamp = "2026-01-01T00:00:00Z"
    return {
        "interface_id": interface["id"], "name": f"client-{number:05d}", "ip": str(ip), "ip_int": int(ip),
        "private_key": private, "public_key": keys.public_key(private),
        "preshared_key": keys.generate_preshared_key(), "username": f"user{number:05d}",
        "password": f"seeded-password-{number}", "down_mbit": number % 3 * 10, "up_mbit": number % 3 * 5,
        "expires_at": expires, "quota_gb": quota, "note": "vip customer" if number % 100 == 42 else "",
        "suspended_reason": suspended, "suspended_at": stamp if suspended else None,
        "rx_bytes": number * 7919 % 1_000_003 * 1000, "tx_bytes": number * 104_729 % 1_000_033 * 1000,
        "last_handshake": handshake, "created_at": stamp, "updated_at": stamp, "period_start": "2026-01-01",
    }


def seed(db, count=10_000, now=None, interface=None):
    """Create the interface (unless given) and ``count`` clients on it; returns (interface, rows)."""
    now = int(time.time()) if now is None else now
    if interface is None:
        interface = interfaces.create(db, dict(INTERFACE))
    rows = [client_row(interface, number, now) for number in range(1, count + 1)]
    with transaction(db):
        db.conn.executemany(
            f"INSERT INTO clients ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [[row[column] for column in COLUMNS] for row in rows])
    return interface, rows

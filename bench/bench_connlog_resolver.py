"""Connection log and resolver: how long loading and checking take as they grow.

Prints:
* the connection-log nftables table for N clients: render time, `nft -f`
  load time in a private namespace, and the cost of a no-change check;
* the listener's ingest rate: NFLOG messages parsed and stored per second;
* the resolver: write + unbound-checkconf + reload time with a blocklist of
  N domains (it grows with the list, as unbound parses every local-zone).

Run as root: /opt/pqv-venv/bin/python bench/bench_connlog_resolver.py
"""

import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.db import connect  # noqa: E402
from puqvpn.services import connlog, resolver  # noqa: E402
from puqvpn.services.system import Context, Runner  # noqa: E402
from tests.netns import Netns, veth  # noqa: E402


def seed(db, clients):
    now = "2026-01-01T00:00:00Z"
    db["interfaces"].insert({"name": "wg0", "address": "10.8.0.1/16", "address6": "fd42:42::1/64",
                             "listen_port": 51820, "endpoint": "vpn.example.com", "conn_logging": 1,
                             "private_key": "x", "public_key": "y", "created_at": now, "updated_at": now})
    db["clients"].insert_all(({"interface_id": 1, "name": f"client{i}", "ip": f"10.8.{i // 250}.{i % 250 + 2}",
                               "ip_int": i, "ip6": f"fd42:42::{i + 2:x}", "public_key": f"k{i}",
                               "username": f"u{i}", "password": "p", "created_at": now, "updated_at": now}
                              for i in range(clients)), batch_size=1000)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def bench_table(tmp, ns, clients):
    db = connect(tmp / f"table{clients}.sqlite3")
    seed(db, clients)
    settings = settings_module.load(environ={}, NETNS=ns.name, CONNLOG_PIDFILE=str(tmp / "none.pid"))
    ctx = Context(db, settings, Runner(netns=ns.name))
    render_s, _ = timed(connlog.render, settings, connlog.logged(db))
    load_s, _ = timed(connlog.ensure_table, ctx)
    check_s, changes = timed(connlog.ensure_table, ctx)
    assert changes == []
    print(f"connlog table, {clients:5d} clients (v4+v6): render {render_s * 1000:6.1f} ms, "
          f"nft load {load_s * 1000:6.1f} ms, no-change check {check_s * 1000:5.1f} ms")
    db.conn.close()


def bench_ingest(tmp, count=50_000):
    payload = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0,
                          socket.inet_aton("198.51.100.1"), socket.inet_aton("203.0.113.9"))
    payload += struct.pack(">HHIIBBHHH", 40001, 443, 1, 0, 0x50, 0x02, 64240, 0, 0)
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7301))
    body += connlog._attr(connlog.NFULA_PREFIX, b"puqvpn-conn wg0 10.8.0.2 alice \0")
    body += connlog._attr(connlog.NFULA_PAYLOAD, payload)
    store = connlog.open_store(tmp / "ingest.sqlite3")
    start = time.perf_counter()
    batch = []
    for _ in range(count):
        batch.append(connlog.entry_from_message(body))
        if len(batch) == 100:        # the listener stores what one recv() brought, in one transaction
            connlog.store(store, batch)
            batch = []
    connlog.store(store, batch) if batch else None
    elapsed = time.perf_counter() - start
    lookup_s, rows = timed(connlog.who, store, 40001, time.time())
    print(f"listener ingest: {count / elapsed:,.0f} connections/s parsed and stored (batches of 100); "
          f"lookup over {count:,} rows {lookup_s * 1000:.1f} ms")


def bench_resolver(tmp, ns, domains):
    db = connect(tmp / f"res{domains}.sqlite3")
    seed(db, 1)
    listed = tmp / f"block{domains}.txt"
    listed.write_text("".join(f"0.0.0.0 ad{i}.tracker{i % 97}.example\n" for i in range(domains)))
    settings = settings_module.load(environ={}, NETNS=ns.name, UNBOUND_USER="",
                                    UNBOUND_CONF=str(tmp / f"unbound{domains}" / "puqvpn.conf"),
                                    UNBOUND_RUN_DIR=str(tmp / f"run{domains}"))
    ctx = Context(db, settings, Runner(netns=ns.name))
    resolver.save_options(db, {"enabled": True, "forwarders": "192.0.2.53"})
    resolver.ensure(ctx)                                   # start with no blocklist
    resolver.save_options(db, {"enabled": True, "forwarders": "192.0.2.53", "blocklist": str(listed)})
    apply_s, changes = timed(resolver.ensure, ctx)
    assert changes[-1] == "resolver: reloaded", changes
    check_s, _ = timed(resolver.check, ctx, resolver.conf_path(ctx))
    print(f"resolver, blocklist of {domains:7,d} domains: write+check+reload {apply_s * 1000:7.1f} ms "
          f"(unbound-checkconf alone {check_s * 1000:6.1f} ms)")
    resolver.stop(ctx)
    db.conn.close()


def main():
    with tempfile.TemporaryDirectory() as folder, Netns("pqbc") as ns, Netns("pqbd") as peer:
        tmp = Path(folder)
        veth(ns, "10.8.0.1/16", peer, "10.8.0.9/16")
        for clients in (100, 1000, 5000):
            bench_table(tmp, ns, clients)
        bench_ingest(tmp)
        for domains in (1_000, 10_000, 100_000):
            bench_resolver(tmp, ns, domains)


if __name__ == "__main__":
    main()

"""Accounting benchmark: the CPU time of one traffic poll with 10,000 peers.

    /opt/pqv-venv/bin/python bench/bench_poll.py [--peers 10000] [--polls 10] [--skip-live]

1. Every peer moving bytes (the worst case for the database): `wg show dump`
   is served from memory with all 10,000 counters grown since the last poll,
   so each poll writes 10,000 counters, totals, hourly and daily buckets in one
   transaction.  Reports the panel process's CPU time per poll.
2. A real wireguard-go interface with 10,000 peers in a namespace (root
   only): the whole poll through the service layer, the panel's CPU plus the
   CPU of the `ip` and `wg` processes it runs.

Target: under 250 ms of CPU per poll.  Prints the figures.
"""

import argparse
import base64
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import db as database  # noqa: E402
from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.services import accounting, apply  # noqa: E402
from puqvpn.services import interfaces as interfaces_service  # noqa: E402
from puqvpn.services.system import Context, FakeRunner, Result, Runner  # noqa: E402


def insert_clients(db, interface, count):
    base = 10 << 24 | 8 << 16
    stamp = "2026-01-01T00:00:00Z"
    rows = []
    for i in range(count):
        ip = base + 2 + i
        key = base64.b64encode(os.urandom(32)).decode()
        rows.append((interface["id"], f"c{i}", f"10.8.{ip >> 8 & 255}.{ip & 255}", ip, key, f"u{i}", "x",
                     1 + i % 28, stamp, stamp))
    with database.transaction(db):
        db.conn.executemany(
            "INSERT INTO clients (interface_id, name, ip, ip_int, public_key, username, password, quota_reset_day, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    # Some quotas and expiry dates, so check_limits has work to look at.
    db.conn.execute("UPDATE clients SET quota_gb = 1000 WHERE id % 3 = 0")
    db.conn.execute("UPDATE clients SET expires_at = '2099-01-01' WHERE id % 5 = 0")


def cpu():
    return time.process_time()


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synthetic(peers, polls, workdir):
    print(f"== one poll, {peers} peers all moving bytes (dump served from memory)")
    db = database.connect(Path(workdir) / "synthetic.sqlite3")
    interface = interfaces_service.create(db, {"name": "wg0", "address": "10.8.0.1/16", "listen_port": "51820",
                                               "endpoint": "vpn.example.com"})
    insert_clients(db, interface, peers)
    keys = [row[0] for row in db.conn.execute("SELECT public_key FROM clients ORDER BY id")]
    state = {"round": 0}

    def dump(argv, stdin):
        n = state["round"]
        lines = [f"{interface['private_key']}\t{interface['public_key']}\t51820\toff"]
        lines += [f"{key}\t(none)\t192.0.2.{i % 250 + 1}:{40000 + i % 20000}\t10.8.{i >> 8 & 255}.{i & 255}/32\t"
                  f"{1796000000 + n}\t{(n + 1) * 1000 + i}\t{(n + 1) * 5000 + i}\t25" for i, key in enumerate(keys)]
        return Result(0, "\n".join(lines) + "\n", "")

    runner = FakeRunner(responses={
        ("ip", "-j", "-d", "link", "show", "dev", "wg0"):
            Result(0, '[{"ifindex": 5, "ifname": "wg0", "mtu": 1420, "linkinfo": {"info_kind": "tun"}}]', ""),
        ("wg", "show", "wg0", "dump"): dump,
    })
    ctx = Context(db, settings_module.load(environ={}, INSTANCE_DIR=workdir), runner)
    times, walls = [], []
    start = 1796000000
    for n in range(polls + 1):
        state["round"] = n
        began, wall = cpu(), time.perf_counter()
        result = accounting.poll(ctx, now=start + n * 30)
        if n:                                    # the first poll creates every counter row
            times.append((cpu() - began) * 1000)
            walls.append((time.perf_counter() - wall) * 1000)
        assert n == 0 or result["clients"] == peers
    total = db.conn.execute("SELECT SUM(tx_bytes) FROM clients").fetchone()[0]
    assert total == sum((polls + 1) * 5000 + i for i in range(peers))
    print(f"CPU per poll: p50 {statistics.median(times):.0f} ms, max {max(times):.0f} ms; "
          f"wall p50 {statistics.median(walls):.0f} ms (target < 250 ms CPU)")
    db.conn.close()
    return {"cpu_p50": statistics.median(times), "cpu_max": max(times), "wall_p50": statistics.median(walls)}


def live(peers, polls, workdir):
    from tests.netns import Netns

    print(f"== one poll through a real wireguard-go interface with {peers} peers (no traffic)")
    ns = Netns("pqbpoll")
    db = None
    try:
        db = database.connect(Path(workdir) / "live.sqlite3")
        name = f"wg{secrets.randbelow(90000) + 10000}"
        settings = settings_module.load(environ={}, NETNS=ns.name, INSTANCE_DIR=workdir,
                                        WG_CONF_DIR=str(Path(workdir) / "wireguard"))
        ctx = Context(db, settings, Runner(netns=ns.name, timeout=120))
        interface = interfaces_service.create(db, {"name": name, "address": "10.8.0.1/16", "listen_port": "51820",
                                                   "endpoint": "vpn.example.com", "nat": "0"})
        insert_clients(db, interface, peers)
        started = time.perf_counter()
        apply.interface_changed(ctx, interface["id"])
        print(f"interface with {peers} peers up in {time.perf_counter() - started:.1f} s")
        times, child_times, walls = [], [], []
        for n in range(polls + 1):
            began, child, wall = cpu(), children_cpu(), time.perf_counter()
            accounting.poll(ctx)
            if n:
                times.append((cpu() - began) * 1000)
                child_times.append((children_cpu() - child) * 1000)
                walls.append((time.perf_counter() - wall) * 1000)
        print(f"CPU per poll: panel p50 {statistics.median(times):.0f} ms + wg/ip processes "
              f"p50 {statistics.median(child_times):.0f} ms; wall p50 {statistics.median(walls):.0f} ms")
    finally:
        ns.close()
        if db is not None:
            db.conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--polls", type=int, default=10)
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        synthetic(args.peers, args.polls, workdir)
        if not args.skip_live:
            if os.geteuid() != 0:
                print("(skipping the live part: needs root)")
            else:
                live(args.peers, args.polls, workdir)


if __name__ == "__main__":
    main()

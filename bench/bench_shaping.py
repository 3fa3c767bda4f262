"""Shaping benchmarks: delivered goodput against the set limit, and the cost of one limit change.

    sudo /opt/pqv-venv/bin/python bench/bench_shaping.py [--rates 1,10,100] [--clients 10000]
                                                         [--changes 200] [--seconds 8]

1. Rate accuracy: a WireGuard tunnel (wireguard-go) between two namespaces,
   the server set up through the service layer; for each rate, iperf3 TCP
   goodput each way against the limit.  Then the same for an IKEv2 client
   (charon with kernel-libipsec, shaped on its TUN device).  Target: within 5 %.
2. Change cost: 10,000 clients with limits on one device (a veth end stands in
   for the tunnel device: tc does not care what it is); the time to build
   them all at reconcile, then p50/p95 of the time to change one client's
   limits through the shaping backend hook.  Target: under 20 ms.

Needs root, wireguard-go, wg, iperf3, tc.  Prints the figures.
"""

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import db as database  # noqa: E402
from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.services import apply, shaping  # noqa: E402
from puqvpn.services import clients as clients_service  # noqa: E402
from puqvpn.services import interfaces as interfaces_service  # noqa: E402
from puqvpn.services.system import Context, Runner  # noqa: E402
from tests.netns import Netns, start_wg_client, veth, wait_until, wg_name  # noqa: E402


def iperf(ns, download, seconds):
    argv = ["iperf3", "-c", "10.8.0.1", "-t", str(seconds), "-O", "2", "-J"]
    if download:
        argv.append("-R")
    for _attempt in range(5):
        report = json.loads(ns.run(argv, timeout=seconds + 60, check=False).stdout)
        if "error" not in report:
            return report["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(0.5)                  # the server listens again a moment after a test
    raise RuntimeError(f"iperf3: {report['error']}")


def rate_accuracy(rates, seconds, workdir, show_classes=False):
    print(f"== goodput against the limit (WireGuard, wireguard-go, iperf3 TCP, {seconds} s after 2 s omitted)")
    print(f"{'limit':>8} {'down':>9} {'error':>7} {'up':>9} {'error':>7}")
    server, client = Netns("pqbs"), Netns("pqbc")
    db = None
    try:
        veth(server, "10.99.1.1/24", client, "10.99.1.2/24")
        db = database.connect(Path(workdir) / "rates.sqlite3")
        settings = settings_module.load(environ={}, NETNS=server.name, INSTANCE_DIR=workdir,
                                        WG_CONF_DIR=str(Path(workdir) / "wireguard"))
        ctx = Context(db, settings, Runner(netns=server.name))
        interface = interfaces_service.create(db, {"name": wg_name(), "address": "10.8.0.1/24", "nat": "0",
                                                   "listen_port": "51820", "endpoint": "10.99.1.1"})
        row = clients_service.create(db, {"interface": interface["id"], "name": "bench"})
        apply.interface_changed(ctx, interface["id"])
        start_wg_client(client, row, interface, "10.99.1.1")
        client.run(["ping", "-c", "1", "-W", "5", "10.8.0.1"])
        server.popen(["iperf3", "-s", "-B", "10.8.0.1"])
        wait_until(lambda: ":5201" in server.run(["ss", "-ltnH"]).stdout)
        print(f"{'none':>8} {iperf(client, True, 3):9.2f} {'':>7} {iperf(client, False, 3):9.2f}")
        worst, results = 0.0, []
        for rate in rates:
            clients_service.update(db, row["id"], {"down_mbit": str(rate), "up_mbit": str(rate)})
            apply.client_changed(ctx, row["id"])
            down, up = iperf(client, True, seconds), iperf(client, False, seconds)
            errors = [(down - rate) / rate * 100, (up - rate) / rate * 100]
            worst = max(worst, *map(abs, errors))
            print(f"{rate:>8g} {down:9.3f} {errors[0]:+6.1f}% {up:9.3f} {errors[1]:+6.1f}%")
            results.append({"rate": rate, "down": down, "up": up, "down_error": errors[0], "up_error": errors[1]})
            if show_classes:
                for stats in shaping.class_counters(ctx, interface, [clients_service.get(db, row["id"])]):
                    print(f"         {stats['direction']:>4} class {stats['rate']}: {stats['packets']} packets, "
                          f"{stats['dropped']} dropped, {stats['overlimits']} overlimits")
        print(f"worst error {worst:.1f}% (target 5%)")
        return results
    finally:
        client.close()
        server.close()
        if db is not None:
            db.conn.close()


def ikev2_rate_accuracy(rates, seconds, workdir):
    """The same measurement for an IKEv2 client (kernel-libipsec), shaped on IPSEC_DEVICE."""
    from tests.test_ikev2_tunnel import RoadWarrior, server_strongswan_conf, start_charon
    from puqvpn.services import pki, profiles, strongswan

    print(f"== goodput against the limit (IKEv2, kernel-libipsec, iperf3 TCP, {seconds} s after 2 s omitted)")
    print(f"{'limit':>8} {'down':>9} {'error':>7} {'up':>9} {'error':>7}")
    tmp = Path(workdir) / "ikev2"
    tmp.mkdir(mode=0o700)
    server, client = Netns("pqbis"), Netns("pqbic")
    db = None
    try:
        veth(server, "10.99.1.1/24", client, "10.99.1.2/24")
        db = database.connect(tmp / "panel.sqlite3")
        settings = settings_module.load(
            environ={}, INSTANCE_DIR=str(tmp), NETNS=server.name, WG_CONF_DIR=str(tmp / "wireguard"),
            SWANCTL_DIR=str(tmp / "swanctl"), VICI_SOCKET=str(tmp / "server.vici"),
            STRONGSWAN_CONF_DIR=str(tmp / "strongswan.d"), NFT_TABLE="pq" + secrets.token_hex(4))
        ctx = Context(db, settings, Runner(netns=server.name))
        pki.generate_ca(db, "Bench VPN CA", "puqvpn bench", key_type="ecdsa-p256")
        pki.generate_server(db, "vpn.puqvpn.test", "10.99.1.1")
        interface = interfaces_service.create(db, {"name": wg_name(), "address": "10.8.0.1/24", "nat": "0",
                                                   "listen_port": "51820", "endpoint": "10.99.1.1",
                                                   "ikev2_enabled": "1"})
        row = clients_service.create(db, {"interface": interface["id"], "name": "bench"})
        strongswan.write_backend_snippet(ctx)
        conf = tmp / "server-strongswan.conf"
        conf.write_text(server_strongswan_conf(tmp, tmp / "server.vici", tmp / "strongswan.d"))
        start_charon(server, conf, tmp / "server.vici")
        apply.interface_changed(ctx, interface["id"])
        sswan = profiles.build(db, "sswan", interface, clients_service.get(db, row["id"]),
                               strongswan.get_options(db))[2]
        road = RoadWarrior(client, tmp, "bench", sswan, row["password"])
        road.connect()
        server.popen(["iperf3", "-s", "-B", "10.8.0.1"])
        wait_until(lambda: ":5201" in server.run(["ss", "-ltnH"]).stdout)
        print(f"{'none':>8} {iperf(client, True, 3):9.2f} {'':>7} {iperf(client, False, 3):9.2f}")
        worst = 0.0
        for rate in rates:
            clients_service.update(db, row["id"], {"down_mbit": str(rate), "up_mbit": str(rate)})
            apply.client_changed(ctx, row["id"])
            down, up = iperf(client, True, seconds), iperf(client, False, seconds)
            errors = [(down - rate) / rate * 100, (up - rate) / rate * 100]
            worst = max(worst, *map(abs, errors))
            print(f"{rate:>8g} {down:9.3f} {errors[0]:+6.1f}% {up:9.3f} {errors[1]:+6.1f}%")
        print(f"worst error {worst:.1f}% (target 5%)")
    finally:
        client.close()
        server.close()
        if db is not None:
            db.conn.close()


def insert_clients(db, interface, count):
    """Rows straight into the table: the benchmark is about tc, not about client creation."""
    base = int(__import__("ipaddress").IPv4Interface(interface["address"]).network.network_address)
    stamp = "2026-01-01T00:00:00Z"
    rows = []
    for i in range(count):
        ip = base + 2 + i
        rows.append((interface["id"], f"c{i}", str(__import__("ipaddress").IPv4Address(ip)), ip,
                     f"pub{i:040d}=", f"u{i}", "x", 5 + i % 50, 1 + i % 20, stamp, stamp))
    with database.transaction(db):
        db.conn.executemany(
            "INSERT INTO clients (interface_id, name, ip, ip_int, public_key, username, password, down_mbit, "
            "up_mbit, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def change_cost(count, changes, workdir):
    print(f"== one limit change among {count} shaped clients (download and upload classes each)")
    server, peer = Netns("pqbt"), Netns("pqbp")
    db = None
    try:
        dev_a, _dev_b = veth(server, "10.99.3.1/24", peer, "10.99.3.2/24")
        name = wg_name()
        server.run(["ip", "link", "set", "dev", dev_a, "down"])
        server.run(["ip", "link", "set", "dev", dev_a, "name", name])
        server.run(["ip", "link", "set", "dev", name, "up"])
        db = database.connect(Path(workdir) / "change.sqlite3")
        settings = settings_module.load(environ={}, NETNS=server.name, INSTANCE_DIR=workdir)
        ctx = Context(db, settings, Runner(netns=server.name))
        interface = interfaces_service.create(db, {"name": name, "address": "10.8.0.1/18", "nat": "0",
                                                   "listen_port": "51820", "endpoint": "10.99.3.1"})
        insert_clients(db, interface, count)
        everyone = clients_service.for_interface(db, interface["id"])

        started = time.perf_counter()
        shaping.reconcile(ctx, [(interface, everyone)])
        built = time.perf_counter() - started
        classes = server.run(["tc", "class", "show", "dev", name]).stdout.count("class htb")
        print(f"reconcile from scratch: {built:.2f} s for {classes} download + "
              f"{classes} upload classes, leaf queues and filters (one tc -batch)")
        started = time.perf_counter()
        shaping.reconcile(ctx, [(interface, everyone)])
        print(f"reconcile again (nothing to change, every class replaced in place): "
              f"{time.perf_counter() - started:.2f} s")

        picks = [everyone[secrets.randbelow(len(everyone))] for _ in range(changes)]
        timings = []
        for i, client in enumerate(picks):
            db.conn.execute("UPDATE clients SET down_mbit = ?, up_mbit = ? WHERE id = ?",
                            [3 + i % 40, 1 + i % 9, client["id"]])
            fresh = clients_service.get(db, client["id"])
            started = time.perf_counter()
            shaping.client_changed(ctx, interface, fresh)
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        p50 = statistics.median(timings)
        p95 = timings[int(len(timings) * 0.95) - 1]
        print(f"change one client's limits: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {timings[-1]:.1f} ms "
              f"over {changes} changes (target < 20 ms)")

        removal = []
        for client in picks[:50]:
            db.conn.execute("UPDATE clients SET down_mbit = 0, up_mbit = 0 WHERE id = ?", [client["id"]])
            fresh = clients_service.get(db, client["id"])
            started = time.perf_counter()
            shaping.client_changed(ctx, interface, fresh)
            removal.append((time.perf_counter() - started) * 1000)
        print(f"lift one client's limits (delete its classes and filters): "
              f"p50 {statistics.median(removal):.1f} ms")
    finally:
        peer.close()
        server.close()
        if db is not None:
            db.conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1,10,100")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--skip-rates", action="store_true")
    parser.add_argument("--show-classes", action="store_true", help="print each class's counters after a rate")
    parser.add_argument("--skip-changes", action="store_true")
    parser.add_argument("--skip-ikev2", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    with tempfile.TemporaryDirectory() as workdir:
        if not args.skip_rates:
            rates = [float(r) for r in args.rates.split(",")]
            rate_accuracy(rates, args.seconds, workdir, args.show_classes)
            if not args.skip_ikev2:
                ikev2_rate_accuracy(rates, args.seconds, workdir)
        if not args.skip_changes:
            change_cost(args.clients, args.changes, workdir)


if __name__ == "__main__":
    main()

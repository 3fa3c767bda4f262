"""IKEv2 benchmarks: connect time, throughput through kernel-libipsec, and the cost of one client change.

    sudo /opt/pqv-venv/bin/python bench/bench_ikev2.py [--connects 30] [--changes 30] [--seconds 5]

A server namespace runs charon-systemd (kernel-libipsec) configured through
the service layer, beside a wireguard-go interface; a client namespace runs
a second charon set up from the client's .sswan profile (as in
tests/test_ikev2_tunnel.py).  Prints:

1. connect time (EAP-MSCHAPv2, the probe connection, then the user's own
   connection with its one-address pool): p50, p95, max over N connects,
   half with the client's IP as IKE identity (as Windows), half with the
   username (as iOS);
2. iperf3 TCP goodput through the tunnel, each way;
3. the time of one client change (a password change) through
   apply.client_changed (WireGuard peer, firewall, shaping, strongSwan) and
   through the strongswan backend alone, p50 and p95.

Needs root, charon-systemd, swanctl, wireguard-go, wg, nft, iperf3.
"""

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import db as database  # noqa: E402
from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.services import apply, pki, profiles, strongswan  # noqa: E402
from puqvpn.services import clients as clients_service  # noqa: E402
from puqvpn.services import interfaces as interfaces_service  # noqa: E402
from puqvpn.services.system import Context, Runner  # noqa: E402
from tests.netns import Netns, veth, wait_until  # noqa: E402
from tests.test_ikev2_tunnel import RoadWarrior, server_strongswan_conf, start_charon  # noqa: E402


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def iperf(ns, download, seconds):
    argv = ["iperf3", "-c", "10.8.0.1", "-t", str(seconds), "-O", "1", "-J"]
    if download:
        argv.append("-R")
    for _attempt in range(5):
        report = json.loads(ns.run(argv, timeout=seconds + 60, check=False).stdout)
        if "error" not in report:
            return report["end"]["sum_received"]["bits_per_second"] / 1e6
        time.sleep(0.5)
    raise RuntimeError(f"iperf3: {report['error']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pqv-bench-ikev2-"))
    tmp.chmod(0o700)
    server, client_ns = Netns("pqbis"), Netns("pqbic")
    db = None
    try:
        veth(server, "10.99.1.1/24", client_ns, "10.99.1.2/24")
        db = database.connect(tmp / "panel.sqlite3")
        settings = settings_module.load(
            environ={}, INSTANCE_DIR=str(tmp), NETNS=server.name, WG_CONF_DIR=str(tmp / "wireguard"),
            SWANCTL_DIR=str(tmp / "swanctl"), VICI_SOCKET=str(tmp / "server.vici"),
            STRONGSWAN_CONF_DIR=str(tmp / "strongswan.d"), NFT_TABLE="pq" + secrets.token_hex(4))
        ctx = Context(db, settings, Runner(netns=server.name))
        pki.generate_ca(db, "Bench CA", "puqvpn bench", key_type="ecdsa-p256")
        pki.generate_server(db, "vpn.puqvpn.test", "10.99.1.1")
        interface = interfaces_service.create(db, {
            "name": f"wg{secrets.randbelow(90000) + 10000}", "address": "10.8.0.1/24",
            "listen_port": str(52000 + secrets.randbelow(1000)), "endpoint": "10.99.1.1", "nat": "0",
            "ikev2_enabled": "1"})
        clients_service.create(db, {"interface": interface["id"], "name": "wg-only"})
        alice = clients_service.create(db, {"interface": interface["id"], "name": "alice"})
        strongswan.write_backend_snippet(ctx)
        conf = tmp / "server-strongswan.conf"
        conf.write_text(server_strongswan_conf(tmp, tmp / "server.vici", tmp / "strongswan.d"))
        start_charon(server, conf, tmp / "server.vici")
        apply.interface_changed(ctx, interface["id"])
        status = strongswan.charon_status(ctx)
        print(f"server: {status['daemon']} {status['version']}, backend {status['backend']}")

        sswan = profiles.build(db, "sswan", interface, alice, strongswan.get_options(db))[2]
        by_ip = RoadWarrior(client_ns, tmp, "by-ip", sswan, alice["password"])
        times = {"IKE id = IP": [], "IKE id = username": []}
        by_name = None
        for n in range(args.connects):
            if n == args.connects // 2:
                by_ip.process.terminate()
                by_ip.process.wait(timeout=10)
                by_name = RoadWarrior(client_ns, tmp, "by-name", sswan, alice["password"],
                                      send_username_as_id=True)
            road = by_name or by_ip
            times["IKE id = IP" if by_name is None else "IKE id = username"].append(road.connect() * 1000)
            assert road.virtual_ip() == [alice["ip"]], road.virtual_ip()
            road.disconnect()
            wait_until(lambda: not strongswan.list_sessions(ctx), timeout=5)
        everything = [t for values in times.values() for t in values]
        print(f"== connect time over {len(everything)} connects (EAP-MSCHAPv2, ECDSA P-256 server certificate)")
        for label, values in list(times.items()) + [("all", everything)]:
            if values:
                print(f"  {label:<18} p50 {statistics.median(values):6.1f} ms  p95 {percentile(values, .95):6.1f} ms"
                      f"  max {max(values):6.1f} ms")

        by_name.connect()
        server.popen(["iperf3", "-s", "-B", "10.8.0.1"])
        wait_until(lambda: ":5201" in server.run(["ss", "-ltnH"]).stdout, timeout=10)
        down = iperf(client_ns, True, args.seconds)
        up = iperf(client_ns, False, args.seconds)
        print(f"== iperf3 TCP through IKEv2 (kernel-libipsec both ends), {args.seconds} s each")
        print(f"  server -> client {down:8.1f} Mbit/s\n  client -> server {up:8.1f} Mbit/s")

        durations = []
        for _ in range(args.changes):
            clients_service.set_password(db, alice["id"])
            started = time.perf_counter()
            apply.client_changed(ctx, alice["id"])
            durations.append((time.perf_counter() - started) * 1000)
        own = []
        for _ in range(args.changes):
            clients_service.set_password(db, alice["id"])
            row = clients_service.get(db, alice["id"])
            started = time.perf_counter()
            strongswan.client_changed(ctx, interface, row)
            own.append((time.perf_counter() - started) * 1000)
        print(f"== one client change (password), {args.changes} times each")
        for label, values in (("apply.client_changed (all backends)", durations),
                              ("strongswan backend alone (files + VICI)", own)):
            print(f"  {label:<40} p50 {statistics.median(values):6.1f} ms  p95 {percentile(values, .95):6.1f} ms"
                  f"  max {max(values):6.1f} ms")
    finally:
        for ns in (client_ns, server):
            ns.close()
        if db is not None:
            db.conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How long one client's change takes to go live, against rebuilding the whole config.

    sudo /opt/pqv-venv/bin/python bench/bench_apply.py [--peers 1000,10000] [--runs 40]

In a private network namespace, a wireguard-go interface is seeded with N
peers through the panel's own database and reconcile.  Then, in the same run:

* live apply: ``apply.client_changed`` for one client being suspended or
  resumed, end to end with every backend present (shaping and strongSwan
  too), then with the data plane's two (WireGuard and firewall), and its
  parts: each of those alone, the bare ``wg set`` command, and the config
  file rewrite that follows in a background thread;
* full regenerate: load every client, render the whole ``wg setconf`` text,
  ``wg syncconf`` it (what a panel that rebuilds on every change does);
* wg-easy's way: write the wg-quick file, then
  ``wg syncconf <if> <(wg-quick strip <file>)``.

Every command runs through ``ip netns exec`` (about 2 ms each), as the panel
does when NETNS is set; on a host it would be that much faster.  Prints p50
and p95 in milliseconds and the ratios.
"""

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.db import connect, transaction  # noqa: E402
from puqvpn.services import apply, clients, firewall, interfaces, keys, wgconfig, wireguard  # noqa: E402
from puqvpn.services.system import Context  # noqa: E402
from tests.netns import Netns  # noqa: E402


def percentiles(samples):
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


def timed(function, runs, prepare=None):
    samples = []
    for _ in range(runs):
        if prepare:
            prepare()
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def seed(db, interface, count):
    """count active clients with real keys, inserted in one transaction."""
    base = int.from_bytes(bytes([10, 64, 0, 0]), "big")
    stamp = "2026-01-01T00:00:00Z"
    rows = []
    for n in range(count):
        ip_int = base + 2 + n
        ip = ".".join(str((ip_int >> s) & 255) for s in (24, 16, 8, 0))
        private, public = keys.generate_keypair()
        rows.append((interface["id"], f"peer{n}", ip, ip_int, f"fd64::{n + 2:x}", private, public,
                     keys.generate_preshared_key(), f"peer{n}", "benchpassword1", stamp, stamp))
    with transaction(db):
        db.conn.executemany(
            "INSERT INTO clients (interface_id, name, ip, ip_int, ip6, private_key, public_key, preshared_key, "
            "username, password, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def run(count, runs, slow_runs):
    ns = Netns("pqbench")
    tmp = Path(tempfile.mkdtemp(prefix="pqbench."))
    try:
        name = f"wg{random.randint(10000, 99999)}"
        settings = settings_module.load(
            config_file=str(tmp / "absent.conf"), environ={}, INSTANCE_DIR=str(tmp / "instance"),
            NETNS=ns.name, WG_CONF_DIR=str(tmp / "wireguard"), WG_BACKEND="userspace",
            SWANCTL_DIR=str(tmp / "swanctl"), VICI_SOCKET=str(tmp / "charon.vici"))
        db = connect(settings["DATABASE"])
        ctx = Context(db, settings)
        interface = interfaces.create(db, {"name": name, "address": "10.64.0.1/16", "address6": "fd64::1/64",
                                           "listen_port": "51820", "endpoint": "vpn.example.com", "dns": ""})
        seed(db, interface, count)
        start = time.perf_counter()
        apply.reconcile(ctx)
        print(f"\n{count} peers on wireguard-go ({name} in netns {ns.name}); "
              f"first reconcile {(time.perf_counter() - start) * 1000:.0f} ms")
        live = wireguard.show_dump(ctx, name)[1]
        assert len(live) == count, f"expected {count} peers live, found {len(live)}"

        ids = [row["id"] for row in db.query("SELECT id FROM clients WHERE interface_id = ?", [interface["id"]])]
        state = {"id": None}

        def toggle():
            """The database change (not timed): suspend a random client, or resume the last one.

            The previous change's config file write (off the request path) is
            let finish first, so it does not compete with the next sample.
            """
            wireguard.flush_config_writes()
            if state["id"] is None:
                state["id"] = random.choice(ids)
                clients.suspend(db, state["id"])
            else:
                clients.resume(db, state["id"])
                state["id"] = None

        def client_row():
            row = clients.get(db, state["id"] or ids[0])
            return interfaces.get(db, row["interface_id"]), row

        results = {}
        results["live apply (apply.client_changed, all backends)"] = timed(
            lambda: apply.client_changed(ctx, state["id"] or ids[0]), runs, toggle)
        every_backend = apply.BACKENDS
        apply.BACKENDS = ("wireguard", "firewall")
        try:
            results["live apply, WireGuard + firewall backends"] = timed(
                lambda: apply.client_changed(ctx, state["id"] or ids[0]), runs, toggle)
        finally:
            apply.BACKENDS = every_backend
        results["  WireGuard backend alone"] = timed(
            lambda: wireguard.client_changed(ctx, *client_row()), runs, toggle)
        results["  firewall backend alone"] = timed(
            lambda: firewall.client_changed(ctx, *client_row()), runs, toggle)
        results["  bare `wg set … peer …`"] = timed(
            lambda: _bare_set(ctx, *client_row()), runs, toggle)
        if state["id"] is not None:
            toggle()
        current = interfaces.get(db, interface["id"])
        results["  the config file, written after (off the request path)"] = timed(
            lambda: wireguard.write_config(ctx, current, clients.for_interface(db, interface["id"])), slow_runs, toggle)
        if state["id"] is not None:
            toggle()

        def full_regenerate():
            current = interfaces.get(db, interface["id"])
            rows = clients.for_interface(db, interface["id"])
            text = wgconfig.render_setconf(current, rows)
            ctx.runner.run(["wg", "syncconf", name, "/dev/stdin"], input=text)
        results["full regenerate + wg syncconf"] = timed(full_regenerate, slow_runs, toggle)
        if state["id"] is not None:
            toggle()

        quick_dir = tmp / "wg-quick"
        quick_dir.mkdir(mode=0o700)
        quick_file = quick_dir / f"{name}.conf"

        def wg_easy():
            current = interfaces.get(db, interface["id"])
            rows = clients.for_interface(db, interface["id"])
            wireguard.write_atomic(quick_file, wgconfig.render_server_config(current, rows))
            stripped = ctx.runner.run(["wg-quick", "strip", str(quick_file)]).stdout
            ctx.runner.run(["wg", "syncconf", name, "/dev/stdin"], input=stripped)
        results["wg-easy: wg syncconf <(wg-quick strip …)"] = timed(wg_easy, max(3, slow_runs // 4), toggle)
        if state["id"] is not None:
            toggle()

        every_p50 = results["live apply (apply.client_changed, all backends)"][0]
        plane_p50 = results["live apply, WireGuard + firewall backends"][0]
        for label, (p50, p95) in results.items():
            ratio = "" if label.startswith(("live", "  ")) else \
                f"   {p50 / plane_p50:6.1f}x WireGuard+firewall, {p50 / every_p50:6.1f}x all backends"
            print(f"  {label:<55} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms{ratio}")
        return results
    finally:
        wireguard.flush_config_writes()
        ns.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _bare_set(ctx, interface, client):
    if client["suspended_reason"] is None:
        wireguard.set_peer(ctx, interface, client)
    else:
        wireguard.remove_peer(ctx, interface, client["public_key"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,10000", help="comma-separated peer counts")
    parser.add_argument("--runs", type=int, default=40, help="samples of each single-client measurement")
    parser.add_argument("--slow-runs", type=int, default=12, help="samples of the full regenerate")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("wireguard-go"):
        sys.exit("needs root and wireguard-go")
    for count in (int(n) for n in args.peers.split(",")):
        run(count, args.runs, args.slow_runs)


if __name__ == "__main__":
    main()

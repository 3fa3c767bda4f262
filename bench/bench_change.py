"""One client change applied live among N shaped peers, against the full rebuild, wg-easy's way and the floor.

    sudo /opt/pqv-venv/bin/python bench/bench_change.py [--clients 10000] [--runs 30] [--slow-runs 3]

Everything in one run, on one wireguard-go interface in a private namespace
(bench/_seed.py), every client shaped (wg + tc + nft all live):

* the panel: create, suspend, resume, limit change and delete, each the
  ``services.apply`` call a route makes after committing the database change
  (the database write itself is timed apart);
* the full rebuild: render every peer, ``wg syncconf``, tear down and build
  every tc class again with ``tc -batch``, reload the nft table;
* wg-easy's way: write the wg-quick file, run ``wg-quick strip FILE`` and
  feed its output to ``wg syncconf IFACE /dev/stdin``, timed together;
* the floor: the raw kernel operations of the same change, one process
  each: one UAPI peer set (``wg set``), the client's tc classes, leaf queues
  and filters, download and upload (one ``tc -batch``, the very lines the
  panel sends), one nft element; and the same removed.

Prints p50/p95 in ms and the ratios.  ``run(lab, interface, runs, slow_runs)``
returns the figures for bench/suite.py.
"""

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._seed import Lab, inside  # noqa: E402
from puqvpn.services import apply, clients, firewall, interfaces, keys, shaping, wgconfig, wireguard  # noqa: E402


def percentiles(samples):
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
            "n": len(ordered)}


def _ms(start):
    return (time.perf_counter() - start) * 1000


def panel_changes(lab, interface, runs):
    """p50/p95 of each kind of change through services.apply, plus the database writes."""
    ctx, db = lab.ctx, lab.db
    samples = {kind: [] for kind in ("create", "suspend", "resume", "limit change", "delete")}
    writes = {kind: [] for kind in samples}
    active = lab.active_ids(interface)
    rng = random.Random(7)

    def settle():
        # The config file is rewritten off the request path; let it finish so it does not overlap the next sample.
        wireguard.flush_config_writes()

    for n in range(runs):
        settle()
        start = time.perf_counter()
        row = clients.create(db, {"interface": interface["id"], "name": f"bench-{n}-{rng.randrange(10**6)}"})
        writes["create"].append(_ms(start))
        start = time.perf_counter()
        apply.client_changed(ctx, row["id"])
        samples["create"].append(_ms(start))

        settle()
        start = time.perf_counter()
        removed = clients.delete(db, row["id"])
        writes["delete"].append(_ms(start))
        start = time.perf_counter()
        apply.client_removed(ctx, removed)
        samples["delete"].append(_ms(start))

        target = rng.choice(active)
        settle()
        start = time.perf_counter()
        clients.suspend(db, target)
        writes["suspend"].append(_ms(start))
        start = time.perf_counter()
        apply.client_changed(ctx, target)
        samples["suspend"].append(_ms(start))

        settle()
        start = time.perf_counter()
        clients.resume(db, target)
        writes["resume"].append(_ms(start))
        start = time.perf_counter()
        apply.client_changed(ctx, target)
        samples["resume"].append(_ms(start))

        settle()
        start = time.perf_counter()
        clients.update(db, target, {"down_mbit": str(5 + n % 40), "up_mbit": str(1 + n % 9)})
        writes["limit change"].append(_ms(start))
        start = time.perf_counter()
        apply.client_changed(ctx, target)
        samples["limit change"].append(_ms(start))
    settle()
    return ({kind: percentiles(values) for kind, values in samples.items()},
            {kind: percentiles(values) for kind, values in writes.items()})


def full_rebuild(lab, interface, runs):
    """Regenerate everything and push it: wg syncconf, every tc class rebuilt, the nft table reloaded."""
    ctx, db = lab.ctx, lab.db
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        current = interfaces.get(db, interface["id"])
        rows = clients.for_interface(db, interface["id"])
        ctx.runner.run(["wg", "syncconf", current["name"], "/dev/stdin"],
                       input=wgconfig.render_setconf(current, rows))
        limits = [(c, *shaping.effective_limits(current, c)) for c in rows]
        shaping._build(ctx, shaping.wg_device(current), [(c, d, u) for c, d, u in limits if d or u])
        firewall.nft_script(ctx, firewall.render(ctx, firewall.load_state(ctx))[0])
        samples.append(_ms(start))
    return percentiles(samples)


def wg_easy(lab, interface, runs):
    """wg-easy's way: write the wg-quick file, `wg-quick strip` it and `wg syncconf` the result (no shell)."""
    ctx, db = lab.ctx, lab.db
    path = lab.dir / "wg-quick" / f"{interface['name']}.conf"
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        current = interfaces.get(db, interface["id"])
        wireguard.write_atomic(path, wgconfig.render_server_config(current, clients.for_interface(db, current["id"])))
        stripped = ctx.runner.run(["wg-quick", "strip", str(path)], timeout=120).stdout
        ctx.runner.run(["wg", "syncconf", current["name"], "/dev/stdin"], input=stripped, timeout=120)
        samples.append(_ms(start))
    return percentiles(samples)


def floor(lab, interface, runs):
    """The raw kernel operations of one change, one process each, in the same state as the panel's."""
    ctx = lab.ctx
    name = interface["name"]
    dev = shaping.wg_device(interface)
    table = firewall.table_name(ctx)
    free = clients.free_ips(lab.db, interface, limit=runs)
    parts = {k: [] for k in ("wg set peer", "tc classes + queues + filters", "nft element",
                             "wg remove peer", "tc delete", "nft delete element")}
    added, removed, spawn = [], [], []
    for ip in free:
        # What any command costs before it does anything: starting a process.
        start = time.perf_counter()
        ctx.runner.run(["true"])
        spawn.append(_ms(start))
        private = keys.generate_private_key()
        fake = {"id": 0, "ip": ip, "public_key": keys.public_key(private)}
        lines = shaping.client_lines(dev, fake, DOWN_MBIT, UP_MBIT)
        steps = [
            ("wg set peer", ["wg", "set", name, "peer", fake["public_key"], "preshared-key", "/dev/stdin",
                             "allowed-ips", f"{ip}/32"], keys.generate_preshared_key() + "\n"),
            ("tc classes + queues + filters", ["tc", "-batch", "-"], "\n".join(lines) + "\n"),
            ("nft element", ["nft", "add", "element", "inet", table, "suspended4", "{", ip, "}"], None),
        ]
        undo = [
            ("wg remove peer", ["wg", "set", name, "peer", fake["public_key"], "remove"], None),
            ("tc delete", ["tc", "-batch", "-"],
             "\n".join(shaping._client_delete_lines(dev, fake, [dev.name, dev.ifb])) + "\n"),
            ("nft delete element", ["nft", "delete", "element", "inet", table, "suspended4", "{", ip, "}"], None),
        ]
        for group, totals in ((steps, added), (undo, removed)):
            total = 0.0
            for label, argv, stdin in group:
                start = time.perf_counter()
                ctx.runner.run(argv, input=stdin)
                took = _ms(start)
                parts[label].append(took)
                total += took
            totals.append(total)
    parts["start a process (`true`)"] = spawn
    return percentiles(added), percentiles(removed), {k: percentiles(v) for k, v in parts.items()}


DOWN_MBIT, UP_MBIT = 10, 5


def run(lab, interface, runs, slow_runs):
    changes, writes = panel_changes(lab, interface, runs)
    floor_add, floor_remove, floor_parts = floor(lab, interface, runs)
    rebuild = full_rebuild(lab, interface, slow_runs)
    easy = wg_easy(lab, interface, slow_runs)
    return {"changes": changes, "writes": writes, "floor_add": floor_add, "floor_remove": floor_remove,
            "floor_parts": floor_parts, "full_rebuild": rebuild, "wg_easy": easy}


def report(figures, peers):
    add, remove = figures["changes"]["create"]["p50"], figures["changes"]["delete"]["p50"]
    lines = [f"one client change among {peers} shaped peers (ms)",
             f"  {'':34} {'p50':>9} {'p95':>9}  {'db write p50':>12}"]
    for kind, values in figures["changes"].items():
        lines.append(f"  {kind:34} {values['p50']:9.1f} {values['p95']:9.1f}  "
                     f"{figures['writes'][kind]['p50']:12.1f}")
    lines.append(f"  {'floor: add (wg set, tc, nft)':34} {figures['floor_add']['p50']:9.1f} "
                 f"{figures['floor_add']['p95']:9.1f}   -> create is {add / figures['floor_add']['p50']:.2f}x")
    lines.append(f"  {'floor: remove':34} {figures['floor_remove']['p50']:9.1f} "
                 f"{figures['floor_remove']['p95']:9.1f}   -> delete is {remove / figures['floor_remove']['p50']:.2f}x")
    for label, values in figures["floor_parts"].items():
        lines.append(f"    {label:32} {values['p50']:9.1f} {values['p95']:9.1f}")
    for label, key in (("full rebuild (wg+tc+nft)", "full_rebuild"), ("wg-easy: syncconf <(wg-quick strip)", "wg_easy")):
        values = figures[key]
        lines.append(f"  {label:34} {values['p50']:9.1f} {values['p95']:9.1f}   -> "
                     f"{values['p50'] / add:.0f}x create, {values['p50'] / remove:.0f}x delete")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--slow-runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, wireguard-go, tc, nft)")
    with Lab("pqchg") as lab, inside(lab.ns):
        interface = lab.add_interface(args.clients)
        apply.reconcile(lab.ctx)
        print(report(run(lab, interface, args.runs, args.slow_runs), args.clients))


if __name__ == "__main__":
    main()

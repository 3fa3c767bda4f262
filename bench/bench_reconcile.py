"""A cold reconcile of N shaped clients (as after a reboot) against the raw commands that build the same state.

    sudo /opt/pqv-venv/bin/python bench/bench_reconcile.py [--clients 10000] [--split 2] [--runs 2]

"Cold" means nothing of the panel's is on the system: the wireguard-go
interfaces, the IFB devices, every tc qdisc and the nft table are deleted
first.  Then, in the same run:

* the panel: ``apply.reconcile`` from the database (interfaces, addresses,
  peers, nft table with its sets, every tc class, queue and filter);
* raw: the same state, rendered beforehand, pushed with the fewest commands:
  per interface ``wireguard-go``, its addresses and MTU, ``wg setconf``, the
  IFB device and one ``tc -batch``; then one ``nft -f``.

``--split 2`` spreads the clients over two interfaces (2 x 5,000).  Prints
both times in seconds and the ratio; ``run(lab, runs)`` returns them.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._seed import Lab, inside  # noqa: E402
from puqvpn.services import apply, clients, firewall, shaping, wgconfig, wireguard  # noqa: E402


def wipe(lab):
    """Take everything the panel made off the system, as a reboot would."""
    run = lab.ctx.runner.run
    for interface in lab.interfaces:
        dev = shaping.wg_device(interface)
        run(["ip", "link", "del", "dev", dev.ifb], check=False)
        run(["ip", "link", "del", "dev", interface["name"]], check=False)
    run(["nft", "delete", "table", "inet", firewall.table_name(lab.ctx)], check=False)
    # wireguard-go exits with its link and removes its control socket; wait for that before a new one starts.
    deadline = time.monotonic() + 10
    sockets = [Path(lab.settings["WG_RUN_DIR"]) / f"{i['name']}.sock" for i in lab.interfaces]
    while any(s.exists() for s in sockets) and time.monotonic() < deadline:
        time.sleep(0.05)


def raw_state(lab):
    """The commands and inputs that build what the database says, rendered ahead of time."""
    ctx, db = lab.ctx, lab.db
    steps = []
    for interface in lab.interfaces:
        name = interface["name"]
        rows = clients.for_interface(db, interface["id"])
        dev = shaping.wg_device(interface)
        lines = shaping.skeleton_lines(dev)
        for client in rows:
            down, up = shaping.effective_limits(interface, client)
            if down or up:
                lines += shaping.client_lines(dev, client, down, up)
        # The same grouping the panel uses: tc is much slower when lines alternate between devices.
        lines.sort(key=lambda line: (line.split()[3], shaping._RANK[tuple(line.split()[:2])]))
        steps += [
            (["wireguard-go", name], None),
            *[(["ip", "address", "add", address, "dev", name], None)
              for address in sorted(wireguard.desired_addresses(interface))],
            (["ip", "link", "set", "dev", name, "mtu", str(interface["mtu"]), "up"], None),
            (["wg", "setconf", name, "/dev/stdin"], wgconfig.render_setconf(interface, rows)),
            (["ip", "link", "add", "name", dev.ifb, "type", "ifb"], None),
            (["ip", "link", "set", "dev", dev.ifb, "up"], None),
            (["tc", "-batch", "-"], "\n".join(lines) + "\n"),
        ]
    text, _digest = firewall.render(ctx, firewall.load_state(ctx))
    steps.append((["nft", "-f", "/dev/stdin"], text))
    return steps


def run(lab, runs):
    """Seconds for the panel's cold reconcile and for the raw commands, best and median of ``runs``."""
    ctx = lab.ctx
    steps = raw_state(lab)
    panel, raw = [], []
    for _ in range(runs):
        wipe(lab)
        wireguard.flush_config_writes()
        start = time.perf_counter()
        apply.reconcile(ctx)
        panel.append(time.perf_counter() - start)

        wipe(lab)
        start = time.perf_counter()
        for argv, stdin in steps:
            ctx.runner.run(argv, input=stdin, timeout=300)
        raw.append(time.perf_counter() - start)
    # Leave the panel's own state behind (the raw build lacks its marks), for the benchmarks that follow.
    wipe(lab)
    apply.reconcile(ctx)
    peers = sum(len(wireguard.show_dump(ctx, i["name"])[1]) for i in lab.interfaces)
    return {"panel": sorted(panel), "raw": sorted(raw), "peers": peers, "commands": len(steps)}


def report(figures, label):
    panel, raw = min(figures["panel"]), min(figures["raw"])
    return (f"cold reconcile, {label} ({figures['peers']} live peers)\n"
            f"  panel apply.reconcile     {panel:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in figures['panel'])})\n"
            f"  raw: {figures['commands']} commands        {raw:7.2f} s   "
            f"(runs: {', '.join(f'{x:.2f}' for x in figures['raw'])})\n"
            f"  ratio                     {panel / raw:7.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--split", type=int, default=1, help="interfaces to spread the clients over")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, wireguard-go, tc, nft)")
    with Lab("pqrec") as lab, inside(lab.ns):
        for _ in range(args.split):
            lab.add_interface(args.clients // args.split, rename=args.split > 1)
        apply.reconcile(lab.ctx)
        label = " + ".join([str(args.clients // args.split)] * args.split)
        print(report(run(lab, args.runs), f"{label} clients"))


if __name__ == "__main__":
    main()

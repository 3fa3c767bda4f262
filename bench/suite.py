"""The benchmark suite: every performance figure of the panel at 10,000 clients, in one command.

    sudo /opt/pqv-venv/bin/python bench/suite.py            # full run, writes docs/benchmarks.md
    sudo /opt/pqv-venv/bin/python bench/suite.py --quick    # 1,000 clients, fewer repetitions (no file)

It seeds a panel instance with 10,000 clients on one wireguard-go interface
(and, apart, 2 x 5,000 on two), every client shaped, all live inside a
private network namespace (bench/_seed.py), and measures:

1. one client change applied live (create, suspend, resume, limit change,
   delete), against the full rebuild, wg-easy's way and the raw kernel
   operations, in the same run (bench/bench_change.py);
2. a cold reconcile against raw ``wg setconf`` + ``tc -batch`` + ``nft -f``
   (bench/bench_reconcile.py), and a warm one (nothing to change);
3. one poll of the counters: CPU and wall time, live and with every peer
   moving bytes (bench/bench_poll.py's synthetic dump);
4. server-side render time of the client list, a client page with its
   charts and the dashboard (the cases of bench/bench_client_list.py);
5. API requests/s and latency under waitress with wrk (bench/bench_api.py);
6. the panel's RSS at rest and under that load (bench/bench_memory.py);
7. the shaped rate against the set rate (bench/bench_shaping.py).

It prints a table of every figure beside its target and (full run, or with
``--write``) writes docs/benchmarks.md.  Namespaces and processes are
removed at the end, also on failure or Ctrl-C.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_api, bench_change, bench_client_list, bench_poll, bench_reconcile, bench_shaping  # noqa: E402
from bench._seed import Lab, inside  # noqa: E402
from puqvpn import create_app  # noqa: E402
from puqvpn.db import transaction  # noqa: E402
from puqvpn.services import accounting, apply, users  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"

FULL = {"clients": 10_000, "runs": 30, "slow_runs": 3, "reconcile_runs": 2, "poll_runs": 5, "page_runs": 30,
        "api_seconds": 10, "rate_seconds": 8, "split_runs": 15}
QUICK = {"clients": 1_000, "runs": 8, "slow_runs": 1, "reconcile_runs": 1, "poll_runs": 3, "page_runs": 8,
         "api_seconds": 3, "rate_seconds": 3, "split_runs": 5}
CONNECTIONS = (1, 8, 32)
RATES = (1.0, 10.0, 100.0)


def log(text):
    print(text, flush=True)


# ------------------------------------------------------------------ the machine

def _version(package):
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    return result.stdout.strip() or "?"


def machine():
    memory = next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.machine())
    return {
        "cpus": os.cpu_count(), "cpu": model, "memory": f"{int(memory) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(), "debian": Path("/etc/debian_version").read_text().strip(),
        "python": platform.python_version(),
        "wireguard": f"wireguard-go {_version('wireguard-go')} (userspace; no kernel module here), "
                     f"wireguard-tools {_version('wireguard-tools')}",
        "tools": f"iproute2 {_version('iproute2')}, nftables {_version('nftables')}, wrk {_version('wrk')}, "
                 f"iperf3 {_version('iperf3')}",
    }


def load():
    return os.getloadavg()


# ------------------------------------------------------------------ 2. warm reconcile, 3. poll

def warm_reconcile(lab):
    start = time.perf_counter()
    report = apply.reconcile(lab.ctx)
    return time.perf_counter() - start, report.changes


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def poll(lab, runs):
    """One accounting poll against the live interfaces: the panel's CPU, its commands' CPU, and wall time."""
    panel, commands, wall = [], [], []
    for n in range(runs + 1):
        cpu, child, started = time.process_time(), _children_cpu(), time.perf_counter()
        accounting.poll(lab.ctx)
        if n:           # the first poll creates the counter rows
            panel.append((time.process_time() - cpu) * 1000)
            commands.append((_children_cpu() - child) * 1000)
            wall.append((time.perf_counter() - started) * 1000)
    return {"cpu": statistics.median(panel), "commands_cpu": statistics.median(commands),
            "wall": statistics.median(wall)}


def synthetic_poll(clients, polls):
    with tempfile.TemporaryDirectory(prefix="pqv-poll.") as workdir:
        return bench_poll.synthetic(clients, polls, workdir)


# ------------------------------------------------------------------ 4. pages

PAGE_CASES = {
    "client list, first page (full page)", "client list, first page (htmx table)", "search 'client-0123' (10 hits)",
    "search 'nobody' (no hits)", "status online", "sort by traffic, descending", "dashboard",
}


def add_history(lab, client_id, days=365):
    """A year of daily and a month of hourly traffic for one client, so its page has full charts."""
    today = datetime.date.today()
    now = datetime.datetime.now(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0)
    with transaction(lab.db):
        lab.db.conn.executemany("INSERT OR REPLACE INTO traffic_daily (client_id, day, rx, tx) VALUES (?, ?, ?, ?)",
                                [(client_id, (today - datetime.timedelta(days=d)).isoformat(),
                                  (d * 7919) % 10**9, (d * 104729) % 10**10) for d in range(days)])
        lab.db.conn.executemany(
            "INSERT OR REPLACE INTO traffic_hourly (client_id, hour, rx, tx) VALUES (?, ?, ?, ?)",
            [(client_id, (now - datetime.timedelta(hours=h)).strftime("%Y-%m-%dT%H"), h * 1000, h * 9000)
             for h in range(31 * 24)])


def pages(lab, interface, runs):
    """Server-side render time (routing, SQL, template; Flask test client, live status panels)."""
    app = create_app(settings=lab.settings)
    users.create_user(lab.db, "admin", "benchmark password 1", "admin")
    client = app.test_client()
    page = client.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/auth/login", data={"username": "admin", "password": "benchmark password 1",
                                                "csrf_token": token})
    if response.status_code != 302:
        raise RuntimeError("login failed")
    target = lab.active_ids(interface)[50]
    add_history(lab, target)
    cases = [case for case in bench_client_list.CASES if case[0] in PAGE_CASES]
    cases.append(("client page with its charts", f"/clients/{target}", {}, {}))
    results = {}
    for label, path, query, headers in cases:
        def request(path=path, query=query, headers=headers, label=label):
            response = client.get(path, query_string=query, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{label}: HTTP {response.status_code}")
        results[label] = bench_client_list.timed(request, runs)
    return results


# ------------------------------------------------------------------ the table

def _ok(value, limit, below=True):
    return value < limit if below else value > limit


def targets(f):
    """[(figure, target, measured, met)] from the collected figures."""
    rows = []
    change = f["change"]
    create, delete = change["changes"]["create"]["p50"], change["changes"]["delete"]["p50"]
    peers = f["clients"]
    rows.append((f"add one client at {peers} shaped peers (wg + tc + nft), p50", "< 10 ms",
                 f"{create:.1f} ms", _ok(create, 10)))
    rows.append((f"remove one client at {peers} shaped peers, p50", "< 25 ms", f"{delete:.1f} ms", _ok(delete, 25)))
    easy = change["wg_easy"]["p50"]
    rows.append(("wg-easy's way (`wg syncconf <(wg-quick strip)`) / add", ">= 100x",
                 f"{easy / create:.0f}x ({easy / 1000:.2f} s)", easy / create >= 100))
    rows.append(("wg-easy's way / remove", ">= 100x", f"{easy / delete:.0f}x", easy / delete >= 100))
    rebuild = change["full_rebuild"]["p50"]
    rows.append(("full rebuild (syncconf + tc + nft) / add", "(for reference)",
                 f"{rebuild / create:.0f}x ({rebuild / 1000:.2f} s)", None))
    for kind, floor_key in (("add", "floor_add"), ("remove", "floor_remove")):
        mine = create if kind == "add" else delete
        base = change[floor_key]["p50"]
        rows.append((f"{kind} / raw kernel ops of the same change", "<= 5x",
                     f"{mine / base:.2f}x ({base:.1f} ms raw)", mine / base <= 5))
    for label, key in ((f"cold reconcile, {peers} clients", "reconcile"),
                       (f"cold reconcile, 2 x {peers // 2} clients", "reconcile_split")):
        panel, raw = min(f[key]["panel"]), min(f[key]["raw"])
        rows.append((f"{label} / raw setconf + tc -batch + nft -f", "<= 1.5x",
                     f"{panel / raw:.2f}x ({panel:.1f} s vs {raw:.1f} s)", panel / raw <= 1.5))
    rows.append((f"one poll, {peers} live peers: panel CPU", "< 250 ms", f"{f['poll']['cpu']:.0f} ms",
                 _ok(f["poll"]["cpu"], 250)))
    rows.append((f"one poll, {peers} peers all moving bytes: panel CPU", "< 250 ms",
                 f"{f['poll_synthetic']['cpu_p50']:.0f} ms", _ok(f["poll_synthetic"]["cpu_p50"], 250)))
    for label in ("client list, first page (full page)", "search 'client-0123' (10 hits)", "status online",
                  "client page with its charts", "dashboard"):
        p50, _p95 = f["pages"][label]
        rows.append((f"page: {label}, p50", "< 50 ms", f"{p50:.1f} ms", _ok(p50, 50)))
    get8 = f["api"]["cases"][("GET client", 8)]
    rows.append(("API GET client at 8 connections: requests/s", "> 500", f"{get8['rps']:.0f}",
                 _ok(get8["rps"], 500, below=False)))
    rows.append(("API GET client at 8 connections: p95", "< 20 ms", f"{get8['p95']:.1f} ms", _ok(get8["p95"], 20)))
    memory = f["api"]["memory"]
    rows.append((f"panel RSS under the API load, {peers} clients", "< 120 MB",
                 f"{memory['load_peak']:.0f} MB (at rest {memory['rest']:.0f} MB)", _ok(memory["load_peak"], 120)))
    if f.get("rates"):
        worst = max(max(abs(r["down_error"]), abs(r["up_error"])) for r in f["rates"])
        rows.append(("shaped rate vs set rate (1, 10, 100 Mbit/s, both ways)", "within 5%",
                     f"worst {worst:.1f}%", worst <= 5))
    return rows


def table(rows):
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':{width}}  {'target':>15}  {'measured':34} met"]
    for figure, target, measured, met in rows:
        mark = "" if met is None else ("yes" if met else "NO")
        lines.append(f"{figure:{width}}  {target:>15}  {measured:34} {mark}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the document

def markdown(f, rows, command):
    m = f["machine"]
    out = ["# Benchmarks", "",
           "Every figure below comes from one run of the suite; reproduce it with", "",
           "```", command, "```", "",
           "(as root, from the repository; `--quick` runs 1,000 clients with fewer repetitions in a few minutes "
           "and writes nothing).", "",
           "## Machine", "",
           f"- {m['cpus']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}, Debian {m['debian']}, "
           f"Python {m['python']}",
           f"- {m['wireguard']}", f"- {m['tools']}",
           f"- run {f['date']}, took {f['duration'] / 60:.1f} min; load average at the start "
           f"{f['load_start'][0]:.1f}, at the end {f['load_end'][0]:.1f} (the machine is shared: CPU figures are "
           f"noisy, and each is the median of several samples)", "",
           "All live: the clients are peers of wireguard-go interfaces in a private network namespace, every "
           "client has a download and an upload limit (HTB class, leaf queue and u32 filter each way), and the "
           "suspended ones sit in the nft sets.  The benchmark process enters the namespace itself, so commands "
           "run as on a host, without an `ip netns exec` wrapper.", "",
           "## Against the targets", "",
           "| figure | target | measured | met |", "| --- | --- | --- | --- |"]
    for figure, target, measured, met in rows:
        out.append(f"| {figure} | {target} | {measured} | {'' if met is None else ('yes' if met else '**no**')} |")

    change = f["change"]
    out += ["", f"## 1. One client change, applied live ({f['clients']} shaped peers)", "",
            "The time of the `services.apply` call a route makes after committing; the database write is "
            "apart.  The config file is rewritten off the request path and is not in these figures.", "",
            "| change | p50 ms | p95 ms | database write p50 ms |", "| --- | ---: | ---: | ---: |"]
    for kind, values in change["changes"].items():
        out.append(f"| {kind} | {values['p50']:.1f} | {values['p95']:.1f} | {change['writes'][kind]['p50']:.1f} |")
    out += ["", "In the same run:", "", "| approach | p50 ms | p95 ms |", "| --- | ---: | ---: |",
            f"| raw kernel ops of an add: `wg set` + `tc -batch` (classes, queues, filters both ways) + `nft add element` | "
            f"{change['floor_add']['p50']:.1f} | {change['floor_add']['p95']:.1f} |",
            f"| raw kernel ops of a remove | {change['floor_remove']['p50']:.1f} | {change['floor_remove']['p95']:.1f} |"]
    for label, values in change["floor_parts"].items():
        out.append(f"| &nbsp;&nbsp;{label} | {values['p50']:.1f} | {values['p95']:.1f} |")
    out += [f"| full rebuild: render + `wg syncconf` + every tc class rebuilt + nft reload | "
            f"{change['full_rebuild']['p50']:.0f} | {change['full_rebuild']['p95']:.0f} |",
            f"| wg-easy: write file, `wg-quick strip`, `wg syncconf` | {change['wg_easy']['p50']:.0f} | "
            f"{change['wg_easy']['p95']:.0f} |"]
    out += ["", "The raw remove deletes a set element, which costs the kernel about as much as everything else in "
            "it together; the panel's delete of an active client has no element to delete (it looks first)."]
    split = f["change_split"]
    out += ["", f"With 2 x {f['clients'] // 2} on two interfaces (one change on the first): add p50 "
            f"{split['changes']['create']['p50']:.1f} ms, remove p50 {split['changes']['delete']['p50']:.1f} ms, "
            f"raw add {split['floor_add']['p50']:.1f} ms, wg-easy {split['wg_easy']['p50']:.0f} ms."]

    out += ["", "## 2. Reconcile", "", "| case | panel s | raw s | ratio |", "| --- | ---: | ---: | ---: |"]
    for label, key in ((f"cold, {f['clients']} clients on one interface", "reconcile"),
                       (f"cold, 2 x {f['clients'] // 2} on two", "reconcile_split")):
        panel, raw = min(f[key]["panel"]), min(f[key]["raw"])
        out.append(f"| {label} | {panel:.2f} | {raw:.2f} | {panel / raw:.2f} |")
    out += ["", f"Warm reconcile (the start-up of a panel whose system is already in line): "
            f"{f['warm_reconcile']:.2f} s.  The first build after seeding took {f['first_build']:.1f} s."]

    out += ["", "## 3. One poll of the counters", "",
            f"- live, {f['clients']} peers: panel CPU {f['poll']['cpu']:.0f} ms, its commands (`wg show dump`, "
            f"`ip`) {f['poll']['commands_cpu']:.0f} ms CPU, wall {f['poll']['wall']:.0f} ms",
            f"- every peer moving bytes (dump served from memory, so every counter, total and bucket is written): "
            f"panel CPU {f['poll_synthetic']['cpu_p50']:.0f} ms, wall {f['poll_synthetic']['wall_p50']:.0f} ms"]

    out += ["", "## 4. Pages, server side", "", "| page | p50 ms | p95 ms |", "| --- | ---: | ---: |"]
    for label, (p50, p95) in f["pages"].items():
        out.append(f"| {label} | {p50:.1f} | {p95:.1f} |")

    api = f["api"]
    out += ["", f"## 5. API under waitress ({api['threads']} threads), wrk over loopback", "",
            f"{bench_api.__doc__.split('Cases:')[0].strip().splitlines()[0]}  Each case runs "
            f"{f['settings']['api_seconds']} s.", "",
            "| case | connections | requests/s | p50 ms | p95 ms | p99 ms | non-2xx |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (label, connections), v in api["cases"].items():
        out.append(f"| {label} | {connections} | {v['rps']:.0f} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p99']:.1f} "
                   f"| {v['errors']} |")
    memory = api["memory"]
    out += ["", "## 6. Memory", "",
            f"Panel RSS with {f['clients']} clients: {memory['rest']:.1f} MB at rest (after its start-up reconcile), "
            f"{memory['load_peak']:.1f} MB at the peak under the API load (VmHWM {memory['hwm']:.1f} MB)."]

    out += ["", "## 7. Rate limits", ""]
    if f.get("rates"):
        out += ["WireGuard (wireguard-go) between two namespaces, iperf3 TCP goodput through the tunnel, "
                f"{f['settings']['rate_seconds']} s per direction after 2 s omitted.", "",
                "| limit Mbit/s | download | error | upload | error |", "| ---: | ---: | ---: | ---: | ---: |"]
        for r in f["rates"]:
            out.append(f"| {r['rate']:g} | {r['down']:.3f} | {r['down_error']:+.1f}% | {r['up']:.3f} | "
                       f"{r['up_error']:+.1f}% |")
    else:
        out.append("Not measured in this run (`--skip-rates`).")
    out += ["", "## Where a target is missed", ""] + analysis(f, rows)
    out += ["", PROFILE.strip(), ""]
    return "\n".join(out)


PROFILE = """
### What the profiles showed, and what was changed

Profiled with pyinstrument (pages, API requests, in-process) and with a
runner that times every command the panel starts (single changes), at
10,000 shaped clients:

- **Dashboard: 380 ms.**  85% was the firewall status panel, which loaded and
  validated every suspended address (1,600 here) through `ipaddress` and
  rendered the whole table only to compare its hash.  The hash covers the
  rules, not the set elements, so the panel and `ensure_table` now compute it
  without them.  After: about 30 ms, most of it the status panels' three
  commands (`ip link`, `nft -t list table`, `ip route`).
- **Create: 34 ms, delete: 56 ms.**  The panel itself took 1-2 ms; the rest
  was commands.  Unblocking an address was an add-then-delete of the set
  element (idempotent), and deleting a set element costs about 14 ms here
  whatever the set's size, so every create, resume and delete paid it;
  a delete also ran `ip link show` before removing the peer.  Now an
  unblock looks the element up (`nft get element`, a few ms) and deletes only
  what is there, and a delete removes the peer at once, looking at the link
  only if that fails.  After: 17 ms each, in the same set-up.
- **Cold reconcile** is the kernel's time: building an HTB class, a leaf
  queue and a u32 filter each way for every active client in one `tc -batch`
  is nearly all of it; the
  panel sorts the lines as the raw benchmark does (by device, then kind),
  which is what keeps tc fast.
- **API GET:** about 1 ms of CPU per request, spread over Flask's request
  handling, the token check, two queries and the JSON; nothing stood out.
  The threads were the lever: waitress ran eight, and on two cores they only
  queue for the one interpreter.  GET one client at 8 connections
  (bench_api.py, 10,000 clients): 8 threads 834 requests/s, p95 15.0 ms;
  4 threads 1,030, p95 10.4 ms; 2 threads 1,212, p95 7.7 ms.  The default is
  now 4 (`THREADS`), leaving room for a slow request beside the quick ones.
"""


# (words in the figure, why it is missed and what would close the gap)
MISSES = [
    ("add one client", "An add is three commands (`wg set`, `nft get element`, `tc -batch`), as the floor is; "
     "starting a process costs {spawn:.1f} ms here before it does anything, and the tc part alone took {tc:.1f} ms "
     "at {clients} shaped clients (adding an HTB class gets slower as classes and filters grow).  The panel is "
     "{add_ratio:.2f}x the raw operations, which alone took {floor_add:.1f} ms: what is left is the operations' own "
     "cost on this machine.  To go "
     "further: no process per operation (wireguard-go's UAPI socket written directly, or netlink for the kernel "
     "module; libnftables and tc netlink messages in-process), and the three backends' operations run concurrently, "
     "since they do not depend on each other."),
    ("remove one client", "A remove is five commands: `wg set … remove`, `ip route` and `nft -t list table` (is the "
     "ruleset still right now that the client's port forwards are gone?), `nft get element`, and `tc -force -batch`. "
     "The panel is {remove_ratio:.2f}x the raw operations.  Closing the gap: as for an add, plus knowing whether the "
     "client had port forwards before the delete (the rows are gone by then), which would save the ruleset check."),
    ("API GET client at 8 connections: p95", "The waitress threads share one interpreter (the GIL) on two cores, "
     "with wrk on the same cores and the machine shared with other work; a GET costs about 1 ms of panel CPU, so "
     "the tail is queueing.  Closing it: fewer threads (`THREADS=2` measured best here), less CPU per request, "
     "or a quieter machine."),
    ("API GET client at 8 connections: requests/s", "See the p95 line: the panel's CPU per request bounds it."),
    ("page:", "Pages are rendered by the Flask test client in the benchmark process; the dashboard's status panels "
     "run three commands each time."),
    ("panel RSS", "The start-up reconcile and the deferred config writes hold every client row of an interface "
     "while they run; Python keeps the memory for reuse."),
    ("shaped rate", "iperf3 and wireguard-go run on the same two shared cores as everything else; a single short "
     "run can fall below the limit when the CPU is busy elsewhere.  Longer runs (`bench_shaping.py --seconds 20`) "
     "on a quiet machine settle within the target."),
    ("wg-easy", "wg-easy's way costs in proportion to the peers (it rewrites and re-reads every one), a single "
     "change does not; the target is set for 10,000 peers."),
    ("cold reconcile", "The reconcile reads the live state first (link, addresses, peers, tc classes, nft hash) "
     "before it builds; the raw commands do not."),
    ("one poll", "The poll writes every counter, total and hourly/daily bucket that moved in one transaction."),
]


def analysis(f, rows):
    """Markdown for every missed target: why, and what would close the gap."""
    parts = f["change"]["floor_parts"]
    values = {
        "spawn": parts["start a process (`true`)"]["p50"], "tc": parts["tc classes + queues + filters"]["p50"],
        "clients": f["clients"], "floor_add": f["change"]["floor_add"]["p50"],
        "add_ratio": f["change"]["changes"]["create"]["p50"] / f["change"]["floor_add"]["p50"],
        "remove_ratio": f["change"]["changes"]["delete"]["p50"] / f["change"]["floor_remove"]["p50"],
    }
    out = []
    for figure, target, measured, met in rows:
        if met is False:
            why = next((text for words, text in MISSES if words in figure), "")
            out.append(f"- **{figure}: {measured}, target {target}.**  {why.format(**values)}")
    return out or ["Every target was met in this run."]


# ------------------------------------------------------------------ the run

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 clients and fewer repetitions")
    parser.add_argument("--clients", type=int, help="clients on the single interface (default 10,000)")
    parser.add_argument("--skip-rates", action="store_true", help="leave out the iperf3 rate measurement")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md even with --quick")
    parser.add_argument("--output", default=str(DOC), help="where to write the report")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: network namespaces, wireguard-go, tc and nft")
    for tool in ("wireguard-go", "wg", "wg-quick", "tc", "nft", "wrk", "iperf3"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    # A kill by PID (SIGTERM) unwinds like Ctrl-C, so every namespace and process is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    settings = dict(QUICK if args.quick else FULL)
    if args.clients:
        settings["clients"] = args.clients
    count = settings["clients"]
    f = {"clients": count, "settings": settings, "machine": machine(), "load_start": load(),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    started = time.perf_counter()

    with Lab("pqsuite") as lab, inside(lab.ns):
        log(f"== seeding {count} clients on one interface")
        interface = lab.add_interface(count)
        begin = time.perf_counter()
        apply.reconcile(lab.ctx)
        f["first_build"] = time.perf_counter() - begin
        log(f"   live in {f['first_build']:.1f} s")
        log("== 1. one client change")
        f["change"] = bench_change.run(lab, interface, settings["runs"], settings["slow_runs"])
        log(bench_change.report(f["change"], count))
        log("== 2. cold reconcile")
        f["reconcile"] = bench_reconcile.run(lab, settings["reconcile_runs"])
        log(bench_reconcile.report(f["reconcile"], f"{count} clients"))
        f["warm_reconcile"], _changes = warm_reconcile(lab)
        log(f"warm reconcile (nothing to change): {f['warm_reconcile']:.2f} s")
        log("== 3. one poll")
        f["poll"] = poll(lab, settings["poll_runs"])
        log(f"live poll: panel CPU {f['poll']['cpu']:.0f} ms, commands CPU {f['poll']['commands_cpu']:.0f} ms, "
            f"wall {f['poll']['wall']:.0f} ms")
        log("== 4. pages")
        f["pages"] = pages(lab, interface, settings["page_runs"])
        for label, (p50, p95) in f["pages"].items():
            log(f"  {label:44} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
        log("== 5, 6. API under wrk, memory")
        f["api"] = bench_api.run(lab, interface, settings["api_seconds"], CONNECTIONS)
        log(bench_api.report(f["api"]))

    with Lab("pqsplit") as lab, inside(lab.ns):
        log(f"== 2 x {count // 2} clients on two interfaces")
        first = lab.add_interface(count // 2, rename=True)
        lab.add_interface(count // 2, rename=True)
        apply.reconcile(lab.ctx)
        f["change_split"] = bench_change.run(lab, first, settings["split_runs"], 1)
        log(bench_change.report(f["change_split"], f"2 x {count // 2}"))
        f["reconcile_split"] = bench_reconcile.run(lab, 1)
        log(bench_reconcile.report(f["reconcile_split"], f"2 x {count // 2} clients"))

    log("== 3. one poll with every peer moving bytes")
    f["poll_synthetic"] = synthetic_poll(count, settings["poll_runs"])
    if not args.skip_rates:
        log("== 7. shaped rate against the set rate")
        with tempfile.TemporaryDirectory(prefix="pqv-rates.") as workdir:
            f["rates"] = bench_shaping.rate_accuracy(list(RATES), settings["rate_seconds"], workdir)

    f["duration"] = time.perf_counter() - started
    f["load_end"] = load()
    rows = targets(f)
    log("")
    log(table(rows))
    log(f"\n{f['duration'] / 60:.1f} min; load average {f['load_start'][0]:.1f} at the start, "
        f"{f['load_end'][0]:.1f} at the end")
    if not args.quick or args.write:
        command = f"sudo {sys.executable} bench/suite.py" + (" --quick" if args.quick else "")
        Path(args.output).write_text(markdown(f, rows, command))
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

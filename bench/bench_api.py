"""API throughput and latency under waitress, driven by wrk over loopback, with the panel's memory.

    sudo /opt/pqv-venv/bin/python bench/bench_api.py [--clients 10000] [--seconds 10] [--connections 1,8,32]

The panel runs as in production (``python app.py``: waitress, its start-up
reconcile, SYSTEM_APPLY on) inside a private namespace holding a
wireguard-go interface with N shaped clients (bench/_seed.py); wrk runs in
the same namespace against its loopback.  An admin API token comes from
``services.tokens``; the wrk scripts read it from the environment.  Cases:

* GET one client: ``GET /api/v1/clients/<name>``;
* list clients: ``GET /api/v1/clients`` (first page of 50);
* create + delete: ``POST /api/v1/clients`` then ``DELETE`` of what was
  created, alternating on each connection: every request applies live
  (wg + tc + nft at N peers).

For each at 1, 8 and 32 connections: requests/s, p50 and p95 latency (from
wrk's histogram, via a Lua ``done`` hook) and non-2xx answers.  The panel's
RSS is read at rest (after start-up) and sampled under the load
(bench/bench_memory.py).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_memory  # noqa: E402
from bench._seed import Lab, inside  # noqa: E402
from puqvpn.services import apply, tokens  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


DONE = """
done = function(summary, latency, requests)
   io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"status_errors": %d, "socket_errors": %d}\\n', summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""

GET = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PQV_TOKEN")
""" + DONE

CREATE_DELETE = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PQV_TOKEN")
wrk.headers["Content-Type"] = "application/json"
local made = 0
function setup(thread)
   made = made + 1
   thread:set("tid", made)
end
local counter, pending = 0, {}
local prefix, iface = os.getenv("PQV_PREFIX"), os.getenv("PQV_INTERFACE")
function request()
   if #pending > 0 then
      return wrk.format("DELETE", "/api/v1/clients/" .. table.remove(pending))
   end
   counter = counter + 1
   local name = string.format("%s-%d-%d", prefix, tid, counter)
   return wrk.format("POST", "/api/v1/clients", nil,
                     string.format('{"name": "%s", "interface": "%s"}', name, iface))
end
function response(status, headers, body)
   if status == 201 then
      local name = body:match('"name":%s*"([^"]+)"')
      if name then table.insert(pending, name) end
   end
end
""" + DONE


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_panel(lab, port):
    """``python app.py`` for the lab's instance, in the lab's namespace (the caller is inside it)."""
    env = dict(os.environ, **lab.env(), PUQVPN_CONFIG=str(lab.dir / "absent.conf"), PUQVPN_HOST="127.0.0.1",
               PUQVPN_PORT=str(port), PUQVPN_SYSTEM_APPLY="1")
    log = open(lab.dir / "panel.log", "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, stdout=log, stderr=log,
                               cwd=str(ROOT))
    lab.ns.processes.append(process)       # killed by PID at cleanup, whatever happens
    deadline = time.monotonic() + 600       # the start-up reconcile of N shaped clients comes first
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the panel exited: {(lab.dir / 'panel.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the panel did not start listening in time")


def wrk(script, url, connections, seconds, env):
    argv = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "10s", "-s", str(script), url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr.strip() or result.stdout.strip()}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    data = json.loads(line)
    return {"rps": data["requests"] / (data["duration_us"] / 1e6), "p50": data["p50_us"] / 1000,
            "p95": data["p95_us"] / 1000, "p99": data["p99_us"] / 1000, "requests": data["requests"],
            "errors": data["status_errors"] + data["socket_errors"]}


def run(lab, interface, seconds, connection_counts):
    """Start the panel, measure every case, stop it; returns {'cases': ..., 'memory': ...}."""
    _row, token = tokens.create(lab.db, "bench", role="admin")
    name = next(lab.db.query("SELECT name FROM clients WHERE interface_id = ? AND suspended_reason IS NULL "
                             "ORDER BY id LIMIT 1 OFFSET 100", [interface["id"]]))["name"]
    scripts = {}
    for label, text in (("get", GET), ("create_delete", CREATE_DELETE)):
        scripts[label] = lab.dir / f"{label}.lua"
        scripts[label].write_text(text)
    port = free_port()
    started = time.perf_counter()
    panel = start_panel(lab, port)
    startup = time.perf_counter() - started
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        time.sleep(2)
        rest = bench_memory.rss_mb(panel.pid)
        cases = {}
        with bench_memory.Sampler(panel.pid) as sampler:
            for label, script, url in (("GET client", "get", f"{base}/clients/{name}"),
                                       ("list clients", "get", f"{base}/clients?per_page=50"),
                                       ("create + delete", "create_delete", f"{base}/clients")):
                for connections in connection_counts:
                    env = dict(os.environ, PQV_TOKEN=token, PQV_INTERFACE=interface["name"],
                               PQV_PREFIX=f"wrk{connections}")
                    cases[(label, connections)] = wrk(scripts[script], url, connections, seconds, env)
        memory = {"rest": rest, "load_peak": sampler.peak, "hwm": bench_memory.peak_mb(panel.pid)}
    finally:
        panel.terminate()
        try:
            panel.wait(timeout=10)
        except subprocess.TimeoutExpired:
            panel.kill()
            panel.wait()
    return {"cases": cases, "memory": memory, "startup": startup, "threads": lab.settings.int("THREADS")}


def report(figures):
    lines = [f"API under waitress ({figures['threads']} threads), wrk over loopback; "
             f"panel start-up incl. reconcile {figures['startup']:.1f} s",
             f"  {'case':18} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"]
    for (label, connections), values in figures["cases"].items():
        lines.append(f"  {label:18} {connections:5d} {values['rps']:9.0f} {values['p50']:8.1f} {values['p95']:8.1f} "
                     f"{values['p99']:8.1f} {values['errors']:8d}")
    memory = figures["memory"]
    lines.append(f"panel RSS: at rest {memory['rest']:.1f} MB, peak under the API load {memory['load_peak']:.1f} MB "
                 f"(VmHWM {memory['hwm']:.1f} MB)")
    return "\n".join(lines)


def main(print_report=True):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", default="1,8,32")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, wireguard-go, tc, nft)")
    with Lab("pqapi") as lab, inside(lab.ns):
        interface = lab.add_interface(args.clients)
        apply.reconcile(lab.ctx)
        figures = run(lab, interface, args.seconds, [int(c) for c in args.connections.split(",")])
    figures["clients"] = args.clients
    if print_report:
        print(report(figures))
    return figures


if __name__ == "__main__":
    main()

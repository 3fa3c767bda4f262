"""How long the panel takes to render the client list with 10,000 clients on one interface.

Seeds a temporary instance, logs in through the Flask test client and times
each request server-side (routing, SQL, template; no network, no browser).

    /opt/pqv-venv/bin/python bench/bench_client_list.py [--count 10000] [--runs 50]

Prints p50 and p95 in milliseconds per case.  Target: under 100 ms.
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed import seed  # noqa: E402
from puqvpn import create_app  # noqa: E402
from puqvpn.db import connect  # noqa: E402
from puqvpn.services import clients, users  # noqa: E402

PARTIAL = {"HX-Request": "true", "HX-Target": "client-table"}

# (label, path, query, headers): what an admin does on the list.
CASES = [
    ("client list, first page (full page)", "/clients/", {}, {}),
    ("client list, first page (htmx table)", "/clients/", {}, PARTIAL),
    ("search 'client-0123' (10 hits)", "/clients/", {"q": "client-0123"}, PARTIAL),
    ("search 'vip' (note, 100 hits)", "/clients/", {"q": "vip"}, PARTIAL),
    ("search '10.8.3' (IP, many hits)", "/clients/", {"q": "10.8.3"}, PARTIAL),
    ("search 'nobody' (no hits)", "/clients/", {"q": "nobody"}, PARTIAL),
    ("status online", "/clients/", {"status": "online"}, PARTIAL),
    ("sort by traffic, descending", "/clients/", {"sort": "traffic", "order": "desc"}, PARTIAL),
    ("last page (page 200)", "/clients/", {"page": 200}, PARTIAL),
    ("dashboard", "/", {}, {}),
]


def percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(call, runs, warmup=3):
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), percentile(samples, 0.95)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="clients to seed")
    parser.add_argument("--runs", type=int, default=50, help="timed requests per case")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="puqvpn-bench-") as directory:
        directory = Path(directory)
        app = create_app(INSTANCE_DIR=str(directory / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                         WG_CONF_DIR=str(directory / "wireguard"), SWANCTL_DIR=str(directory / "swanctl"),
                         BACKUP_DIR=str(directory / "backups"))
        db = connect(app.config["PUQVPN"]["DATABASE"])
        start = time.perf_counter()
        seed(db, args.count)
        print(f"seeded {args.count} clients in {time.perf_counter() - start:.1f} s")
        users.create_user(db, "admin", "benchmark password 1", "admin")

        client = app.test_client()
        page = client.get("/auth/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        response = client.post("/auth/login", data={"username": "admin", "password": "benchmark password 1",
                                                    "csrf_token": token})
        assert response.status_code == 302, "login failed"

        print(f"{'case':44} {'p50 ms':>8} {'p95 ms':>8}")
        for label, path, query, headers in CASES:
            def request(path=path, query=query, headers=headers):
                response = client.get(path, query_string=query, headers=headers)
                assert response.status_code == 200, (label, response.status_code)
            p50, p95 = timed(request, args.runs)
            print(f"{label:44} {p50:8.1f} {p95:8.1f}")

        # The SQL alone, to tell the query from the template.
        now = int(time.time())
        for label, filters in (("SQL only: first page", {}), ("SQL only: search 'client-0123'", {"q": "client-0123"}),
                               ("SQL only: search 'nobody'", {"q": "nobody"})):
            p50, p95 = timed(lambda filters=filters: clients.search(db, now=now, **filters), args.runs)
            print(f"{label:44} {p50:8.1f} {p95:8.1f}")
        db.conn.close()


if __name__ == "__main__":
    main()

"""What the TLS front costs: requests per second over HTTPS against waitress directly.

    /opt/pqv-venv/bin/python bench/bench_tls.py [seconds] [connections]

Serves the panel on loopback with a throwaway self-signed certificate and
runs wrk against a static file and the login page, once through the TLS
front and once straight at the waitress port behind it.  Prints figures.
"""

import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puqvpn import create_app  # noqa: E402
from puqvpn.tls import start_tls  # noqa: E402
from tests.test_tls import self_signed  # noqa: E402


def wrk(url, seconds, connections):
    output = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                            capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p99 = re.search(r"99%\s+([0-9.]+\w+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return (float(rate.group(1)) if rate else 0.0, p99.group(1) if p99 else "?",
            errors.group(1) if errors else "none", int(non2xx.group(1)) if non2xx else 0)


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)   # a full queue is the point here
    work = Path(tempfile.mkdtemp(prefix="puqvpn-bench-tls-"))
    front = None
    try:
        cert, key = self_signed(work)
        app = create_app(INSTANCE_DIR=str(work / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                         TLS_CERT=str(cert), TLS_KEY=str(key))
        front = start_tls(app, "127.0.0.1", 0, str(cert), str(key), threads=8)
        print(f"{connections} connections, {seconds} s each, 2 wrk threads")
        print(f"{'path':<22} {'via':<14} {'req/s':>8} {'p99':>9}  errors")
        for path in ("/static/app.css", "/auth/login"):
            for via, base in (("TLS front", f"https://127.0.0.1:{front.port}"),
                              ("waitress only", f"http://127.0.0.1:{front.upstream_port}")):
                rate, p99, errors, non2xx = wrk(base + path, seconds, connections)
                print(f"{path:<22} {via:<14} {rate:>8.0f} {p99:>9}  {errors}"
                      + (f", {non2xx} non-2xx" if non2xx else ""))
    finally:
        if front:
            front.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

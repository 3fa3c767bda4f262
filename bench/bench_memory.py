"""The panel's memory: resident set size of the waitress process at rest and under load.

Used by bench/bench_api.py, which starts the panel (``python app.py``) and
drives it with wrk; ``Sampler`` reads /proc/<pid>/status every 100 ms in a
thread meanwhile, so the peak under load is seen even when it is brief.
VmHWM (the kernel's own high-water mark) is read at the end as a check.

    sudo /opt/pqv-venv/bin/python bench/bench_memory.py [--clients 10000]

runs the API benchmark and prints only the memory figures.
"""

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def status_kib(pid, field):
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def rss_mb(pid):
    value = status_kib(pid, "VmRSS")
    return None if value is None else value / 1024


def peak_mb(pid):
    value = status_kib(pid, "VmHWM")
    return None if value is None else value / 1024


class Sampler:
    """Samples a process's RSS in the background: ``with Sampler(pid) as s: ...; s.peak``."""

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self):
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self):
        return max(self.samples) if self.samples else None


def main():
    from bench import bench_api

    figures = bench_api.main(print_report=False)
    memory = figures["memory"]
    print(f"panel RSS with {figures['clients']} clients: at rest {memory['rest']:.1f} MB, "
          f"peak under the API load {memory['load_peak']:.1f} MB (VmHWM {memory['hwm']:.1f} MB)")


if __name__ == "__main__":
    main()

"""Real network namespaces for tunnel tests.

Each namespace gets a random name so concurrent runs never collide, tracks
the processes started in it, and on close kills those PIDs (and any other
PID still inside the namespace, which can only be ours) before deleting it.
"""

import os
import secrets
import shutil
import signal
import subprocess
import time

import pytest


def unique_name(prefix, length=15):
    """A random name such as 'pqs3f9a1c2' that fits an interface name (15 chars)."""
    room = max(4, length - len(prefix))
    return (prefix + secrets.token_hex(8))[: len(prefix) + room][:length]


def requires_root_tools(*binaries):
    missing = [b for b in binaries if shutil.which(b) is None]
    reason = ("needs root" if os.geteuid() != 0 else f"missing {', '.join(missing)}")
    return pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=reason)


def _run(argv, check=True, timeout=30, input=None):
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed


class Netns:
    def __init__(self, prefix="pqt"):
        self.name = unique_name(prefix)
        self.processes = []
        _run(["ip", "netns", "add", self.name])
        self.run(["ip", "link", "set", "lo", "up"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def argv(self, argv):
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    def run(self, argv, check=True, timeout=30, input=None):
        return _run(self.argv(argv), check=check, timeout=timeout, input=input)

    def popen(self, argv, **kwargs):
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(process)
        return process

    def pids(self):
        out = _run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=3)
        # Daemons that forked (wireguard-go, charon) live on inside the namespace.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            remaining = self.pids()
            for pid in remaining:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while remaining and time.monotonic() < deadline:
                time.sleep(0.05)
                remaining = self.pids()
            if not remaining:
                break
        _run(["ip", "netns", "del", self.name], check=False)


def veth(ns_a, addr_a, ns_b, addr_b):
    """Join two namespaces with a veth pair; returns the two device names."""
    dev_a, dev_b = unique_name("va"), unique_name("vb")
    _run(["ip", "link", "add", dev_a, "netns", ns_a.name, "type", "veth",
          "peer", "name", dev_b, "netns", ns_b.name])
    for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
        for address in ([addr] if isinstance(addr, str) else addr):
            family = "-6" if ":" in address else "-4"
            ns.run(["ip", family, "addr", "add", address, "dev", dev, "nodad"] if family == "-6"
                   else ["ip", "addr", "add", address, "dev", dev])
        ns.run(["ip", "link", "set", dev, "up"])
    return dev_a, dev_b


def wait_until(predicate, timeout=10, interval=0.1):
    """Poll until predicate() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wg_name():
    """A random wgNNNNN name: wireguard-go's sockets share /var/run/wireguard across namespaces."""
    return f"wg{secrets.randbelow(90000) + 10000}"


def start_wg_client(ns, client, interface, server_ip, allowed_ips="10.8.0.0/24", routes=("10.8.0.0/24",),
                    keepalive=5):
    """A plain wireguard-go client in ``ns`` for a panel client row; returns its interface name."""
    name = wg_name()
    ns.run(["wireguard-go", name])
    ns.run(["wg", "set", name, "private-key", "/dev/stdin", "peer", interface["public_key"],
            "endpoint", f"{server_ip}:{interface['listen_port']}", "allowed-ips", allowed_ips,
            "persistent-keepalive", str(keepalive)], input=client["private_key"] + "\n")
    if client.get("preshared_key"):
        ns.run(["wg", "set", name, "peer", interface["public_key"], "preshared-key", "/dev/stdin"],
               input=client["preshared_key"] + "\n")
    ns.run(["ip", "addr", "add", f"{client['ip']}/32", "dev", name])
    ns.run(["ip", "link", "set", "dev", name, "mtu", str(interface.get("mtu") or 1420), "up"])
    for route in routes:
        ns.run(["ip", "route", "add", route, "dev", name])
    return name

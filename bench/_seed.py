"""Shared set-up for the benchmark suite: a panel instance on live wireguard-go interfaces.

A ``Lab`` is a private network namespace, a temporary instance folder and a
database seeded through bench/seed.py: N clients per interface, every one
of them shaped (each client's own limit, or the interface default).  The
benchmarking process enters the namespace itself (``inside``), so the panel's
commands run there exactly as they would on a host, without an
``ip netns exec`` wrapper per command (about 5 ms each on this machine).

Cleanup is by PID and by name of what the lab created: ``Lab.close`` kills
the processes left in its namespace (wireguard-go, waitress, wrk), deletes
the namespace and the folder, and runs even when a benchmark fails.
"""

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.seed import seed  # noqa: E402
from puqvpn import settings as settings_module  # noqa: E402
from puqvpn.db import connect, transaction  # noqa: E402
from puqvpn.services import interfaces as interfaces_service  # noqa: E402
from puqvpn.services import wireguard  # noqa: E402
from puqvpn.services.system import Context  # noqa: E402
from tests.netns import Netns, wg_name  # noqa: E402

CLONE_NEWNET = 0x40000000
DEFAULT_DOWN, DEFAULT_UP = 50, 20      # Mbit/s for clients whose own limit is 0


def _setns(fd):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def inside(ns):
    """Run this thread, and every process and thread it starts meanwhile, in the namespace ``ns``."""
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)



class Lab:
    """A namespace, an instance folder and a database; ``add_interface`` seeds shaped clients."""

    def __init__(self, prefix="pqsuite", **overrides):
        self.ns = Netns(prefix)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}."))
        self.settings = settings_module.load(
            config_file=str(self.dir / "absent.conf"), environ={}, INSTANCE_DIR=str(self.dir / "instance"),
            WG_CONF_DIR=str(self.dir / "wireguard"), WG_BACKEND="userspace", SWANCTL_DIR=str(self.dir / "swanctl"),
            VICI_SOCKET=str(self.dir / "charon.vici"), BACKUP_DIR=str(self.dir / "backups"),
            COMMAND_TIMEOUT="120", BACKGROUND_JOBS="0", **overrides)
        self.db = connect(self.settings["DATABASE"])
        self.ctx = Context(self.db, self.settings)     # no NETNS: the process is inside (see ``inside``)
        self.interfaces = []

    def env(self):
        """PUQVPN_* variables that point a panel process at this lab's instance."""
        keys = ("INSTANCE_DIR", "WG_CONF_DIR", "WG_BACKEND", "SWANCTL_DIR", "VICI_SOCKET", "BACKUP_DIR",
                "COMMAND_TIMEOUT", "BACKGROUND_JOBS")
        return {f"PUQVPN_{key}": str(self.settings[key]) for key in keys}

    def add_interface(self, count, rename=False):
        """One interface (a /18 pool, limits by default) with ``count`` seeded clients; returns its row.

        With ``rename`` names and usernames carry the interface name: seed.py numbers every interface
        from 1, and both are unique across interfaces, so give it for each of several interfaces.
        """
        number = len(self.interfaces)
        interface = interfaces_service.create(self.db, {
            "name": wg_name(), "address": f"10.{8 + number * 4}.0.1/18", "listen_port": str(51820 + number),
            "endpoint": "vpn.example.com", "dns": "1.1.1.1",
            "default_down_mbit": str(DEFAULT_DOWN), "default_up_mbit": str(DEFAULT_UP)})
        seed(self.db, count, interface=interface)
        if rename:
            with transaction(self.db):
                self.db.execute("UPDATE clients SET name = ? || '-' || name, username = ? || '-' || username "
                                "WHERE interface_id = ?", [interface["name"], interface["name"], interface["id"]])
        self.interfaces.append(interface)
        return interface

    def active_ids(self, interface):
        return [row["id"] for row in self.db.query(
            "SELECT id FROM clients WHERE interface_id = ? AND suspended_reason IS NULL ORDER BY id",
            [interface["id"]])]

    def close(self):
        try:
            wireguard.flush_config_writes()
            self.db.conn.close()
        finally:
            try:
                self.ns.close()
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

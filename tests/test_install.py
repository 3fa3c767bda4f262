"""install.sh on a fresh Debian 12, end to end, in a chroot.

The root filesystem comes from Debian's packages (mmdebstrap).  The project
is copied in as a clone has it and installed the way the README says.  What
needs the network (apt-get, pip) runs with the host's network; everything
that starts daemons or touches nftables and WireGuard runs inside a private
network namespace, so the host's network is left alone.  The panel is then
used over HTTPS with the password the installer printed.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from puqvpn.services import keys
from tests.netns import Netns, requires_root_tools

REPO = Path(__file__).resolve().parent.parent
CHROOT_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"]

INSTALL_SH = REPO / "install.sh"


# ------------------------------------------------------------- quick checks

def installer(*args, stdin=None, script=True):
    """Run install.sh (or pipe it into bash, as `curl … | sudo bash` does)."""
    argv = ["bash", INSTALL_SH, *args] if script else ["bash", "-s", "--", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, input=stdin,
                          env={"PATH": os.environ["PATH"], "PUQVPN_ANY_OS": "1"})


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_installer_passes_shellcheck():
    result = subprocess.run(["shellcheck", INSTALL_SH], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_lists_every_option():
    result = installer("--help")
    assert result.returncode == 0
    for option in ("--port", "--domain", "--admin-user", "--admin-password", "--no-start", "--start",
                   "--source", "--uninstall", "--purge"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be a number from 1 to 65535"),
    (["--domain", "vpn.example.com;reboot"], "--domain must be a domain name"),
    (["--admin-user", "a b"], "--admin-user may only contain"),
    (["--port"], "--port needs a value"),
    (["--colour"], "unknown option --colour"),
])
def test_bad_options_stop_before_anything_is_done(args, message):
    result = installer(*args)
    assert result.returncode == 1
    assert message in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer checks for root first")
def test_piped_into_bash_without_a_source_it_says_where_the_source_must_come_from():
    result = installer("--no-start", stdin=INSTALL_SH.read_text(), script=False)
    assert result.returncode == 1
    assert "this installer has no puqvpn source to install" in result.stderr
    assert "--source /path/to/puqvpn" in result.stderr
    assert "==> [3]" not in result.stdout   # it stopped before installing anything


@pytest.mark.skipif(os.geteuid() != 0, reason="the installer checks for root first")
def test_a_source_that_is_not_puqvpn_is_refused(tmp_path):
    missing = installer("--source", str(tmp_path / "nowhere"), stdin=INSTALL_SH.read_text(), script=False)
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    other = installer("--source", str(tmp_path), stdin=INSTALL_SH.read_text(), script=False)
    assert other.returncode == 1 and "is not a puqvpn source tree" in other.stderr


# ------------------------------------------------------- the full install



def run(argv, timeout=600, check=True, **kwargs):
    completed = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and completed.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({completed.returncode}):\n"
                             f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")
    return completed


def mounts_under(root):
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def processes_rooted_in(root):
    """PIDs whose root directory is inside ``root``: only what the test started there."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/root").startswith(str(root)):
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture
def rootfs():
    """A fresh Debian 12 minbase with proc, sys and dev mounted; all undone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pqv-rootfs-", dir="/var/tmp"))
    try:
        started = time.monotonic()
        run(["mmdebstrap", "--variant=minbase", "bookworm", root, "/etc/apt/sources.list.d/debian.sources"])
        print(f"\nrootfs built in {time.monotonic() - started:.1f} s")
        run(["mount", "-t", "proc", "proc", root / "proc"])
        run(["mount", "-t", "sysfs", "sys", root / "sys"])
        run(["mount", "--rbind", "/dev", root / "dev"])
        run(["mount", "--make-rslave", root / "dev"])
        yield root
    finally:
        for sig in (15, 9):
            for pid in processes_rooted_in(root):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for point in mounts_under(root):
            if run(["umount", "-R", point], check=False).returncode != 0:
                run(["umount", "-R", "-l", point], check=False)
        left = mounts_under(root)
        if left:  # never delete through a bind mount of the host's /dev
            pytest.fail(f"could not unmount {left}; {root} left in place")
        shutil.rmtree(root, ignore_errors=True)


def copy_clone(root):
    """The project as a clone has it (tracked files plus new, not ignored ones)."""
    files = run(["git", "-C", REPO, "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split("\n")
    target = root / "root" / "puqvpn"
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def in_chroot(root, *argv):
    return ["chroot", root, *CHROOT_ENV, *argv]


LOGIN = r"""
import http.cookiejar, json, re, ssl, sys, urllib.error, urllib.parse, urllib.request
url, ca, username, password = sys.argv[1:5]
context = ssl.create_default_context(cafile=ca)          # the installer's own certificate
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                     urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
opener.addheaders = [("Referer", url + "/auth/login")]   # as a browser sends it; CSRF checks it on HTTPS
page = opener.open(url + "/auth/login", timeout=10).read().decode()
token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": token}).encode()
try:
    login_status = opener.open(url + "/auth/login", data=form, timeout=10).status
except urllib.error.HTTPError as refused:
    login_status = refused.code
home = opener.open(url + "/", timeout=10)
print(json.dumps({"login_status": login_status, "home": home.geturl(), "status": home.status}))
"""


def log_in(ns, root, username, password, port=8443):
    """Log in over HTTPS from inside the namespace; returns where the browser ends up."""
    result = ns.run(["/opt/pqv-venv/bin/python", "-c", LOGIN, f"https://127.0.0.1:{port}",
                     root / "etc/puqvpn/tls/panel.crt", username, password], timeout=60)
    return json.loads(result.stdout)


def database_rows(root, sql):
    conn = sqlite3.connect(root / "var/lib/puqvpn/puqvpn.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def panel_pid(root):
    path = root / "run/puqvpn/panel.pid"
    return int(path.read_text()) if path.exists() else None


@pytest.mark.slow
@requires_root_tools("mmdebstrap", "chroot", "unshare", "mount", "umount", "ip", "git")
def test_install_log_in_upgrade_and_uninstall_on_a_fresh_debian_12(rootfs):
    timings = {}
    # pip inside a fresh chroot trusts what the host trusts: the ca-certificates
    # package that install.sh installs picks these up when it is configured.
    local_cas = list(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    (rootfs / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
    for ca in local_cas:
        shutil.copy2(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
    copy_clone(rootfs)

    # 1. Packages and Python dependencies, with the network; nothing started.
    started = time.monotonic()
    first = run(in_chroot(rootfs, "bash", "/root/puqvpn/install.sh", "--no-start", "--admin-user", "owner"))
    timings["install (packages, venv, settings)"] = time.monotonic() - started
    output = first.stdout
    assert "Installing puqvpn." in output
    assert "==> [1] Checking the operating system" in output
    password = re.search(r"^ Password:  (\S+)$", output, re.M).group(1)
    assert re.search(r"^ Username:  owner$", output, re.M)
    assert re.search(r"^ Open:      https://\S+:8443$", output, re.M)
    assert oct((rootfs / "var/lib/puqvpn").stat().st_mode & 0o777) == "0o700"
    settings_text = (rootfs / "etc/puqvpn/puqvpn.conf").read_text()
    assert "INSTANCE_DIR = /var/lib/puqvpn" in settings_text and "PORT = 8443" in settings_text
    assert (rootfs / "opt/puqvpn/venv/bin/puqvpn").exists()
    if not Path("/sys/module/wireguard").exists():
        assert "adding wireguard-go (userspace WireGuard)" in output
        assert (rootfs / "usr/bin/wireguard-go").exists()

    # The unit file the installer ships passes systemd's own check against the
    # installed app (its /opt bound over /opt in a private mount namespace).
    verify = run(["unshare", "--mount", "sh", "-c", 'mount --bind "$1/opt" /opt && systemd-analyze verify "$2"',
                  "sh", rootfs, rootfs / "opt/puqvpn/packaging/puqvpn.service"], check=False)
    if shutil.which("systemd-analyze"):
        assert verify.returncode == 0, verify.stderr

    with Netns("pqinst") as ns:
        # 2. Start it as after a reboot, inside a private network namespace:
        # without systemd the installer itself starts charon and the panel.
        started = time.monotonic()
        second = ns.run(in_chroot(rootfs, "bash", "/opt/puqvpn/install.sh", "--start"), timeout=300)
        timings["--start (charon and the panel)"] = time.monotonic() - started
        assert "systemd is not running" in second.stdout
        assert "started charon" in second.stdout and "started panel" in second.stdout
        assert "the panel answers" in second.stdout
        assert "sudo /opt/puqvpn/install.sh --start" in second.stdout   # what to do after a reboot
        assert "Password:" not in second.stdout                        # printed once only

        landed = log_in(ns, rootfs, "owner", password)
        assert (landed["login_status"], landed["status"]) == (200, 200)
        assert "/auth/login" not in landed["home"]
        refused = log_in(ns, rootfs, "owner", "not-the-password")
        assert refused["login_status"] == 401 and "/auth/login" in refused["home"]

        # Some data: an existing WireGuard server taken over through the CLI.
        server_private, _ = keys.generate_keypair()
        (rootfs / "etc/wireguard").mkdir(exist_ok=True)
        (rootfs / "etc/wireguard/wg0.conf").write_text(
            f"[Interface]\nAddress = 10.44.0.1/24\nListenPort = 51820\nPrivateKey = {server_private}\n\n"
            f"# alice\n[Peer]\nPublicKey = {keys.generate_keypair()[1]}\nAllowedIPs = 10.44.0.2/32\n")
        imported = ns.run(in_chroot(rootfs, "puqvpn", "import-wg", "/etc/wireguard/wg0.conf",
                                    "--endpoint", "vpn.example.com"), timeout=120)
        assert "Imported wg0 with 1 client(s)" in imported.stdout
        tunnel = ns.run(["ip", "-o", "link", "show", "wg0"]).stdout.split(":")[0]   # its ifindex
        before = {
            "users": database_rows(rootfs, "SELECT username, password_hash FROM users"),
            "clients": database_rows(rootfs, "SELECT name, public_key, ip FROM clients"),
            "interface": database_rows(rootfs, "SELECT name, private_key, listen_port FROM interfaces"),
            "secret_key": (rootfs / "var/lib/puqvpn/secret_key").read_bytes(),
            "certificate": (rootfs / "etc/puqvpn/tls/panel.crt").read_bytes(),
        }
        old_panel = panel_pid(rootfs)

        # 3. Running the installer again (offline: nothing new to fetch) upgrades
        # in place and keeps everything.
        started = time.monotonic()
        third = ns.run(in_chroot(rootfs, "bash", "/root/puqvpn/install.sh"), timeout=300)
        timings["upgrade re-run"] = time.monotonic() - started
        assert "puqvpn is installed: upgrading it" in third.stdout
        assert "is at the latest schema" in third.stdout
        assert "accounts exist already: none created" in third.stdout
        assert "keeping the certificate" in third.stdout
        assert panel_pid(rootfs) not in (None, old_panel)                  # restarted on the new code
        after = {
            "users": database_rows(rootfs, "SELECT username, password_hash FROM users"),
            "clients": database_rows(rootfs, "SELECT name, public_key, ip FROM clients"),
            "interface": database_rows(rootfs, "SELECT name, private_key, listen_port FROM interfaces"),
            "secret_key": (rootfs / "var/lib/puqvpn/secret_key").read_bytes(),
            "certificate": (rootfs / "etc/puqvpn/tls/panel.crt").read_bytes(),
        }
        assert after == before
        # The tunnel stayed up through the panel's restart: the same link, not a new one.
        assert ns.run(["ip", "-o", "link", "show", "wg0"]).stdout.split(":")[0] == tunnel
        assert after["clients"][0][0] == "alice"
        assert "/auth/login" not in log_in(ns, rootfs, "owner", password)["home"]
        status = json.loads(ns.run(in_chroot(rootfs, "puqvpn", "status", "--json")).stdout)
        assert [(i["name"], i["clients"]) for i in status["interfaces"]] == [("wg0", 1)]

        # 4. --uninstall removes the service and the app, keeps data and settings.
        gone = ns.run(in_chroot(rootfs, "bash", "/root/puqvpn/install.sh", "--uninstall"), timeout=120)
        assert "puqvpn is uninstalled." in gone.stdout
        for path in ("opt/puqvpn", "usr/local/bin/puqvpn", "etc/systemd/system/puqvpn.service",
                     "run/puqvpn/panel.pid", "run/puqvpn/charon.pid"):
            assert not (rootfs / path).exists(), path
        assert not [pid for pid in processes_rooted_in(rootfs)
                    if b"app.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert database_rows(rootfs, "SELECT username FROM users") == [("owner",)]
        assert (rootfs / "etc/puqvpn/puqvpn.conf").exists()

        # Uninstalling keeps the tunnels up until a reboot: clients stay connected.
        assert ns.run(["ip", "-o", "link", "show", "wg0"]).stdout.split(":")[0] == tunnel

        # 5. --purge takes the data too, and the tunnels and firewall table with it.
        # Reinstall first (pip needs the network; --no-start touches no network state).
        started = time.monotonic()
        again = run(in_chroot(rootfs, "bash", "/root/puqvpn/install.sh", "--no-start"))
        timings["reinstall after --uninstall"] = time.monotonic() - started
        assert "puqvpn is installed: upgrading it" not in again.stdout     # the app was gone
        assert "accounts exist already: none created" in again.stdout      # the data was not
        purged = ns.run(in_chroot(rootfs, "bash", "/root/puqvpn/install.sh", "--purge"), timeout=120)
        assert "wg0: taken down" in purged.stdout
        assert "Removing the data" in purged.stdout
        assert not (rootfs / "var/lib/puqvpn").exists() and not (rootfs / "etc/puqvpn").exists()
        assert ns.run(["ip", "link", "show", "wg0"], check=False).returncode != 0
        assert "puqvpn" not in ns.run(["nft", "list", "tables"]).stdout

    for what, seconds in timings.items():
        print(f"{what}: {seconds:.1f} s")

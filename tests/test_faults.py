"""Faults the panel must survive without losing anything.

- The panel is SIGKILLed in the middle of an apply (a client is in the
  database but not yet on the live WireGuard interface); after a restart its
  start-up reconcile makes the live system match the database again.
- charon is stopped and ``nft`` fails: the panel keeps serving, says what is
  wrong, keeps the changes, and catches up once the faults are gone.
- A background job that raises does not stop the other jobs, and shows.

The first two run the real tools in a throwaway network namespace.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from puqvpn import jobs
from puqvpn.db import connect
from puqvpn.services import clients, interfaces, pki, strongswan, tokens, users
from puqvpn.services.system import Context, Runner

from .conftest import csrf_token
from .netns import Netns, requires_root_tools, wait_until
from .routes import login_as, make_app

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- background jobs

def test_a_job_that_raises_does_not_stop_the_others_and_shows_on_the_dashboard(tmp_path, monkeypatch):
    app = make_app(tmp_path)
    runs = {"healthy": 0, "broken": 0}

    def broken(ctx):
        runs["broken"] += 1
        raise RuntimeError("the poller hit a bug")

    def healthy(ctx):
        runs["healthy"] += 1

    plan = [jobs.Job("broken poller", "accounting", "poll", 0.05), jobs.Job("healthy retry", "apply", "x", 0.05)]
    monkeypatch.setattr(plan[0], "target", lambda: broken)
    monkeypatch.setattr(plan[1], "target", lambda: healthy)
    monkeypatch.setattr(jobs, "plan", lambda settings: plan)
    monkeypatch.setattr(jobs, "JOBS", [])
    jobs.start(app)
    try:
        assert wait_until(lambda: runs["broken"] >= 3 and runs["healthy"] >= 3, timeout=20)
        assert all(job.thread.is_alive() for job in plan), "a failing job must keep its thread and the others'"
        db = connect(app.config["PUQVPN"]["DATABASE"])
        users.create_user(db, "admin", "correct horse battery", "admin")
        client = app.test_client()
        login_as(client, users.get(db, "admin")["id"])
        page = client.get("/").get_data(as_text=True)
        db.conn.close()
        assert "broken poller: RuntimeError: the poller hit a bug" in page
        assert "healthy retry" not in page.split("broken poller")[1].split("</tr>")[0]
    finally:
        jobs.stop()
    assert not any(job.thread.is_alive() for job in plan)


# ---------------------------------------------------------------- helpers for the live tests

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script(path, body):
    """A small executable Python program standing in for a system tool."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def ifname():
    """A random interface name; its wireguard-go control socket is removed afterwards.

    wireguard-go leaves the socket behind when it is killed, and the folder is
    shared by every namespace.
    """
    name = f"wg{secrets.randbelow(90000) + 10000}"
    yield name
    path = Path("/var/run/wireguard") / f"{name}.sock"
    if path.exists():
        path.unlink()


def live_peers(ns, ifname):
    """{public key: allowed ips} as `wg show` reports them inside the namespace."""
    result = ns.run(["wg", "show", ifname, "allowed-ips"], check=False)
    if result.returncode != 0:
        return None
    peers = {}
    for line in result.stdout.splitlines():
        key, _tab, allowed = line.partition("\t")
        peers[key] = sorted(allowed.split())
    return peers


def wanted_peers(db, interface_id):
    return {row["public_key"]: sorted(f"{ip}/{32 if '.' in ip else 128}" for ip in (row["ip"], row["ip6"]) if ip)
            for row in db.query("SELECT * FROM clients WHERE interface_id = ? AND suspended_reason IS NULL",
                                [interface_id])}


# ---------------------------------------------------------------- SIGKILL in the middle of an apply

SERVE = "from puqvpn import create_app; from puqvpn.server import serve; serve(create_app())"


class PanelProcess:
    """The panel as its own process (its own session, so it and its children die together)."""

    def __init__(self, env, port):
        self.port = port
        self.process = subprocess.Popen([sys.executable, "-c", SERVE], env=env, cwd=str(ROOT),
                                        start_new_session=True, stdout=subprocess.DEVNULL,
                                        stderr=open(env["PUQVPN_INSTANCE_DIR"] + "/panel.log", "ab"))
        assert wait_until(self.answers, timeout=30), "the panel did not start"

    def answers(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/auth/login", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self):
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@requires_root_tools("wg", "wireguard-go", "nft", "ip")
@pytest.mark.netns
def test_sigkill_in_the_middle_of_an_apply_then_restart_converges(tmp_path, ifname):
    instance = tmp_path / "instance"
    arm, mark = tmp_path / "slow-wg-armed", tmp_path / "wg-peer-in-progress"
    # `wg set ... peer ...` stalls while armed, so the kill lands between the commit and the live change.
    slow_wg = _script(tmp_path / "slow-wg", f"""import os, sys, time
if "peer" in sys.argv and os.path.exists({str(arm)!r}):
    open({str(mark)!r}, "a").close()
    time.sleep(30)
os.execvp("wg", ["wg", *sys.argv[1:]])
""")
    port = _free_port()
    panels = []
    with Netns("pqkill") as ns:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PUQVPN_")},
               "PUQVPN_CONFIG": str(tmp_path / "absent.conf"), "PUQVPN_INSTANCE_DIR": str(instance),
               "PUQVPN_HOST": "127.0.0.1", "PUQVPN_PORT": str(port), "PUQVPN_NETNS": ns.name,
               "PUQVPN_SYSTEM_APPLY": "1", "PUQVPN_BACKGROUND_JOBS": "0", "PUQVPN_WG_BIN": slow_wg,
               "PUQVPN_WG_CONF_DIR": str(tmp_path / "wireguard"), "PUQVPN_SWANCTL_DIR": str(tmp_path / "swanctl"),
               "PUQVPN_VICI_SOCKET": str(tmp_path / "charon.vici"),
               "PUQVPN_STRONGSWAN_CONF_DIR": str(tmp_path / "strongswan.d"),
               "PUQVPN_NFT_TABLE": "pq" + secrets.token_hex(4), "PUQVPN_COMMAND_TIMEOUT": "60"}
        instance.mkdir(mode=0o700)
        db = connect(instance / "puqvpn.sqlite3")
        try:
            interface = interfaces.create(db, {"name": ifname, "address": "10.66.0.1/24",
                                               "listen_port": str(52000 + secrets.randbelow(1000)),
                                               "endpoint": "192.0.2.1"})
            for number in range(3):
                clients.create(db, {"interface": interface["id"], "name": f"before{number}"})
            token = tokens.create(db, "kill-test", "operator")[1]

            panels.append(PanelProcess(env, port))
            # The start-up reconcile brought the interface up with the first three clients.
            assert wait_until(lambda: live_peers(ns, ifname) == wanted_peers(db, interface["id"]), timeout=30)

            arm.touch()
            answers = []

            def create(name):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v1/clients", method="POST",
                    data=json.dumps({"interface": ifname, "name": name}).encode(),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        answers.append(response.status)
                except (urllib.error.URLError, ConnectionError, OSError) as error:
                    answers.append(repr(error))
            senders = [threading.Thread(target=create, args=(f"during{n}",)) for n in range(4)]
            for sender in senders:
                sender.start()
            assert wait_until(mark.exists, timeout=30), "no apply got under way"
            panels[-1].kill()
            for sender in senders:
                sender.join(30)

            # The kill landed mid-apply: the database has a client the live interface lacks.
            wanted = wanted_peers(db, interface["id"])
            live = live_peers(ns, ifname) or {}
            assert set(wanted) - set(live), "the kill should have left a committed client off the live system"
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

            arm.unlink()
            panels.append(PanelProcess(env, port))
            assert wait_until(lambda: live_peers(ns, ifname) == wanted_peers(db, interface["id"]), timeout=30), \
                f"live {live_peers(ns, ifname)} != database {wanted_peers(db, interface['id'])}"
            assert interfaces.get(db, interface["id"])["apply_error"] is None
            # Every client the killed panel answered 201 for is there.
            names = {row["name"] for row in db.query("SELECT name FROM clients")}
            assert sum(1 for a in answers if a == 201) <= len(names - {f"before{n}" for n in range(3)})
        finally:
            for panel in panels:
                if panel.process.poll() is None:
                    panel.kill()
            db.conn.close()


# ---------------------------------------------------------------- charon stopped, nft failing

def _server_strongswan_conf(tmp, vici_socket, snippet_dir):
    return f"""charon {{
  load_modular = yes
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
}}
include {snippet_dir}/*.conf
"""


def _charon_answers(path):
    try:
        session = strongswan.open_session(type("C", (), {"settings": {"VICI_SOCKET": str(path)}})(), timeout=2)
        session.version()
        return True
    except Exception:
        return False


@requires_root_tools("wg", "wireguard-go", "nft", "ip", "charon-systemd", "swanctl")
@pytest.mark.netns
def test_with_charon_stopped_and_nft_failing_the_panel_serves_says_why_and_catches_up(tmp_path, ifname):
    tmp_path.chmod(0o700)
    failing_nft = _script(tmp_path / "failing-nft", """import sys
sys.stderr.write("Error: Could not process rule: Operation not permitted\\n")
sys.exit(1)
""")
    vici = tmp_path / "server.vici"
    with Netns("pqflt") as ns:
        app = make_app(tmp_path, SYSTEM_APPLY="1", NETNS=ns.name, VICI_SOCKET=str(vici),
                       STRONGSWAN_CONF_DIR=str(tmp_path / "strongswan.d"), NFT_TABLE="pq" + secrets.token_hex(4),
                       NFT_BIN=failing_nft, COMMAND_TIMEOUT="20")
        settings = app.config["PUQVPN"]
        db = connect(settings["DATABASE"])
        ctx = Context(db, settings, Runner(netns=ns.name))
        try:
            pki.generate_ca(db, "Fault test CA", "puqvpn tests", key_type="ecdsa-p256")
            pki.generate_server(db, "vpn.puqvpn.test", "192.0.2.1")
            interface = interfaces.create(db, {"name": ifname, "address": "10.67.0.1/24", "ikev2_enabled": "1",
                                               "listen_port": str(53000 + secrets.randbelow(1000)),
                                               "endpoint": "192.0.2.1"})
            users.create_user(db, "admin", "correct horse battery", "admin")
            browser = app.test_client()
            login_as(browser, users.get(db, "admin")["id"])
            token = csrf_token(browser)

            # Both faults at once: charon is not running, nft refuses everything.
            response = browser.post("/clients/new", data={"interface": str(interface["id"]), "name": "alice",
                                                          "csrf_token": token}, follow_redirects=True)
            assert response.status_code == 200
            page = response.get_data(as_text=True)
            assert "Saved, but not yet live" in page
            assert "charon" in page and "nft" in page, "the message names both causes"
            alice = clients.get(db, "alice")
            assert alice is not None, "the change is kept"
            pending = interfaces.get(db, interface["id"])["apply_error"]
            assert "charon" in pending and "Operation not permitted" in pending

            # The panel keeps serving, with the cause on every page.
            for path in ("/", "/clients/", "/interfaces/", f"/clients/{alice['id']}"):
                response = browser.get(path)
                assert response.status_code == 200, path
                assert "is not in sync with the live system" in response.get_data(as_text=True), path
            dashboard = browser.get("/").get_data(as_text=True)
            assert "strongSwan (charon) is not running" in dashboard and "Operation not permitted" in dashboard
            # More changes while degraded are kept too.
            browser.post("/clients/new", data={"interface": str(interface["id"]), "name": "bob", "csrf_token": token})
            assert clients.get(db, "bob") is not None

            # The faults go away: nft works again and charon starts.
            settings["NFT_BIN"] = "nft"
            assert strongswan.write_backend_snippet(ctx) is not None
            conf = tmp_path / "strongswan.conf"
            conf.write_text(_server_strongswan_conf(tmp_path, vici, tmp_path / "strongswan.d"))
            ns.popen(["env", f"STRONGSWAN_CONF={conf}", "charon-systemd"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert wait_until(lambda: _charon_answers(vici), timeout=20), "charon did not start"

            # The background retry catches up on its own.
            retry = jobs.Job("retry pending changes", "apply", "retry_pending", 30)
            jobs.run_once(retry, settings)
            assert retry.last_error == ""
            assert interfaces.get(db, interface["id"])["apply_error"] is None
            assert "is not in sync" not in browser.get("/").get_data(as_text=True)
            assert live_peers(ns, ifname) == wanted_peers(db, interface["id"])
            # The table nft refused to create is there now, with the interface's NAT.
            table = ns.run(["nft", "list", "table", "inet", settings["NFT_TABLE"]]).stdout
            assert f'"{ifname} NAT IPv4"' in table
            session = strongswan.open_session(ctx)
            loaded = {name.decode() if isinstance(name, bytes) else name
                      for conn in session.list_conns() for name in conn}
            for row in (alice, clients.get(db, "bob")):
                assert any(name in loaded for name in strongswan.names(row["id"]).values()), loaded
        finally:
            db.conn.close()

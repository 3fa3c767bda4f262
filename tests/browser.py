"""Shared fixtures for browser tests: the panel served by waitress, driven by Debian's chromium.

Import what a test module needs, e.g.::

    from tests.browser import browser_type_launch_args, live_server, page_errors, snap, log_in

pytest-playwright's own ``browser``, ``context`` and ``page`` fixtures then use
/usr/bin/chromium (``playwright install`` cannot fetch a browser here).
"""

import logging
import socket
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect
from waitress.server import create_server

from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import users

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
ADMIN = ("admin", "correct horse battery staple")

# A loaded CI machine (two cores, other tests running) can take seconds for a swap.
expect.set_options(timeout=15_000)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """Overrides pytest-playwright's fixture: launch the system chromium, headless."""
    return {"executable_path": "/usr/bin/chromium", "headless": True, "args": list(CHROMIUM_ARGS)}


class LiveServer:
    """A create_app() on a temporary directory, served by waitress on 127.0.0.1 in a thread."""

    def __init__(self, directory):
        self.app = create_app(
            INSTANCE_DIR=str(directory / "instance"),
            SYSTEM_APPLY="0",
            BACKGROUND_JOBS="0",
            WG_CONF_DIR=str(directory / "wireguard"),
            SWANCTL_DIR=str(directory / "swanctl"),
            BACKUP_DIR=str(directory / "backups"),
        )
        self.db = connect(self.app.config["PUQVPN"]["DATABASE"])
        # Port 0: the kernel picks a free port, so concurrent test runs never collide.
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=4,
                                    clear_untrusted_proxy_headers=True)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name=f"waitress-{self.port}", daemon=True)

    def start(self):
        self.thread.start()
        # Wait until the socket answers, so the first page load never races the thread.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10):
            pass
        return self

    def stop(self):
        logging.getLogger("waitress").setLevel(logging.CRITICAL)

        def close_everything():
            # Runs in the server's own thread: an empty socket map ends its loop.
            for channel in list(self.server._map.values()):
                channel.handle_close()

        self.server.trigger.pull_trigger(close_everything)
        self.thread.join(timeout=10)
        self.server.task_dispatcher.shutdown()
        self.db.conn.close()
        assert not self.thread.is_alive(), "waitress did not stop"

    def create_admin(self, username=ADMIN[0], password=ADMIN[1], role="admin"):
        if users.get(self.db, username) is None:
            users.create_user(self.db, username, password, role)
        return username, password


@pytest.fixture
def live_server(tmp_path):
    server = LiveServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page_errors(page):
    """What went wrong in ``page``: console errors (CSP violations are among them), uncaught
    exceptions, and responses that are missing (404) or broken (5xx).

    Chromium also logs every 4xx response to the console; 422 (a form with errors) and
    the like are the panel answering as designed, so those lines are left to the
    response check.  A test ends with ``assert page_errors == []``.
    """
    errors = []

    def on_console(message):
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console: {message.text}")

    def on_response(response):
        if response.status == 404 or response.status >= 500:
            errors.append(f"{response.status}: {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"exception: {error}"))
    page.on("response", on_response)
    return errors


def snap(page, name):
    """Save a full-page screenshot as test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, server, username=None, password=None):
    """Create the admin (unless given other credentials) and log in through the form."""
    if username is None:
        username, password = server.create_admin()
    page.goto(server.url + "/auth/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)

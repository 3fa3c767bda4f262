"""Fifty client creations and a storm of edits from ten threads against the real server.

The panel runs under waitress on a loopback port, as in production.  Half the
threads use the pages (each with its own login and CSRF token), half the API.
No answer may be a 5xx, no address may be handed out twice, and no edit may
be lost: two PATCHes of different fields of one client, racing, both stick.
"""

import http.cookiejar
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from waitress.server import create_server

from puqvpn.db import connect
from puqvpn.services import clients, interfaces, tokens, users

from .routes import make_app

THREADS = 10
CLIENTS_PER_THREAD = 5
ROUNDS = 6


@pytest.fixture
def server(tmp_path):
    app = make_app(tmp_path, THREADS="8")
    db = connect(app.config["PUQVPN"]["DATABASE"])
    interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                           "endpoint": "vpn.example.com"})
    for number in range(THREADS):
        users.create_user(db, f"op{number}", "correct horse battery", "operator")
    token = tokens.create(db, "load", "operator")[1]
    wsgi = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=wsgi.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{wsgi.effective_port}", token, db, app.config["PUQVPN"]["DATABASE"]
    wsgi.close()
    db.conn.close()


class Browser:
    """One person at the panel: a cookie jar and the CSRF token of their session."""

    def __init__(self, base, statuses):
        self.base = base
        self.statuses = statuses
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())
        self.token = None

    def request(self, method, path, form=None, json_body=None, headers=None):
        data, headers = None, dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=60) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        self.statuses.append((method, path, status))
        return status, body

    def login(self, username):
        _status, page = self.request("GET", "/auth/login")
        self.token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
        status, _ = self.request("POST", "/auth/login", form={"username": username, "password": "correct horse battery",
                                                             "csrf_token": self.token})
        assert status == 302
        _status, page = self.request("GET", "/auth/password")
        self.token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_concurrent_creations_and_edits_lose_nothing(server):
    base, api_token, db, database = server
    statuses, errors = [], []
    bearer = {"Authorization": f"Bearer {api_token}"}
    hot_names = [f"hot{n}" for n in range(THREADS // 2)]
    for name in hot_names:
        clients.create(db, {"interface": "wg0", "name": name})
    barrier = threading.Barrier(THREADS)

    def work(number):
        own = connect(database)   # sqlite connections are not shared between threads
        try:
            browser = Browser(base, statuses)
            via_ui = number < THREADS // 2
            if via_ui:
                browser.login(f"op{number}")
            barrier.wait()
            for index in range(CLIENTS_PER_THREAD):
                name = f"t{number}c{index}"
                if via_ui:
                    browser.request("POST", "/clients/new", form={"interface": "1", "name": name,
                                                                   "csrf_token": browser.token})
                else:
                    browser.request("POST", "/api/v1/clients", json_body={"interface": "wg0", "name": name},
                                    headers=bearer)
            # Two threads share each hot client and race on different fields of it.
            hot = hot_names[number % len(hot_names)]
            field = "download_mbit" if number < THREADS // 2 else "upload_mbit"
            for round_ in range(1, ROUNDS + 1):
                browser.request("PATCH", f"/api/v1/clients/{hot}", json_body={field: round_ * 10 + number},
                                headers=bearer)
            # And each edits its own clients' notes, through the page or the API.
            for index in range(CLIENTS_PER_THREAD):
                name = f"t{number}c{index}"
                if via_ui:
                    row = clients.get(own, name)
                    browser.request("POST", f"/clients/{row['id']}/edit", form={
                        "name": name, "ip": row["ip"], "ip6": row["ip6"] or "", "username": row["username"],
                        "password": "", "down_mbit": "0", "up_mbit": "0", "expires_at": "", "quota_gb": "0",
                        "quota_reset_day": "1", "note": f"edited by {number}", "csrf_token": browser.token})
                else:
                    browser.request("PATCH", f"/api/v1/clients/{name}", json_body={"note": f"edited by {number}"},
                                    headers=bearer)
        except Exception as error:   # reported below, with the thread's number
            errors.append((number, repr(error)))
        finally:
            own.conn.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    server_errors = [s for s in statuses if s[2] >= 500]
    assert server_errors == []
    refused = [s for s in statuses if s[2] >= 400]
    assert refused == [], "every request here is valid and allowed"

    rows = list(db.query("SELECT * FROM clients"))
    created = [row for row in rows if row["name"].startswith("t")]
    assert len(created) == THREADS * CLIENTS_PER_THREAD
    addresses = [row["ip"] for row in rows]
    assert len(set(addresses)) == len(addresses), "an address was handed out twice"
    assert len({row["public_key"] for row in rows}) == len(rows)
    for row in created:
        owner = int(re.match(r"t(\d+)c", row["name"]).group(1))
        assert row["note"] == f"edited by {owner}", f"{row['name']}: an edit was lost"
    for index, name in enumerate(hot_names):
        hot = clients.get(db, name)
        # Thread `index` set the download limit, thread `index + 5` the upload limit; the last rounds stick.
        assert hot["down_mbit"] == ROUNDS * 10 + index, f"{name}: a download edit was lost"
        assert hot["up_mbit"] == ROUNDS * 10 + index + THREADS // 2, f"{name}: an upload edit was lost"
    print(f"\n{len(statuses)} requests from {THREADS} threads: no 5xx, "
          f"{len(created)} clients created, {len(set(addresses))} distinct addresses")

"""The Prometheus endpoint: token-protected, per-client and per-interface figures, panel health."""

import time

import pytest

from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import accounting, clients, interfaces
from puqvpn.services.system import Context, FakeRunner
from tests.conftest import INTERFACE


@pytest.fixture
def metrics_app(tmp_path):
    def make(token):
        app = create_app(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                         WG_CONF_DIR=str(tmp_path / "wireguard"), METRICS_TOKEN=token)
        app.config["TESTING"] = True
        return app
    return make


def scrape(app, token):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return app.test_client().get("/metrics", headers=headers)


def test_without_a_token_setting_there_is_no_endpoint(metrics_app):
    assert scrape(metrics_app(""), "anything").status_code == 404


def test_a_wrong_or_missing_token_is_refused(metrics_app):
    app = metrics_app("s3cret-token")
    assert scrape(app, None).status_code == 401
    assert scrape(app, "s3cret-tokeN").status_code == 401
    response = app.test_client().get("/metrics", headers={"Authorization": "Basic s3cret-token"})
    assert response.status_code == 401 and "Bearer" in response.headers["WWW-Authenticate"]


def test_clients_interfaces_and_panel_health(metrics_app):
    app = metrics_app("s3cret-token")
    db = connect(app.config["PUQVPN"]["DATABASE"])
    wg0 = interfaces.create(db, dict(INTERFACE))
    alice = clients.create(db, {"interface": wg0["id"], "name": "alice"})
    bob = clients.create(db, {"interface": wg0["id"], "name": "bob"})
    ctx = Context(db, app.config["PUQVPN"], FakeRunner())
    accounting.record(ctx, [accounting.Sample(alice["id"], "wg:1", 1000, 5000, int(time.time()) - 10),
                            accounting.Sample(bob["id"], "wg:1", 7, 9)])
    clients.suspend(db, bob["id"], "quota")
    db.conn.close()

    response = scrape(app, "s3cret-token")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    assert 'puqvpn_client_rx_bytes_total{interface="wg0",client="alice"} 1000' in lines
    assert 'puqvpn_client_tx_bytes_total{interface="wg0",client="alice"} 5000' in lines
    assert 'puqvpn_client_online{interface="wg0",client="alice"} 1' in lines
    assert 'puqvpn_client_online{interface="wg0",client="bob"} 0' in lines
    assert 'puqvpn_client_suspended{interface="wg0",client="bob",reason="quota"} 1' in lines
    assert 'puqvpn_interface_tx_bytes_total{interface="wg0"} 5009' in lines
    assert 'puqvpn_interface_online_clients{interface="wg0"} 1' in lines
    assert 'puqvpn_interface_apply_pending{interface="wg0"} 0' in lines
    assert "puqvpn_up 1" in lines
    assert "# TYPE puqvpn_client_rx_bytes_total counter" in lines
    assert any(line.startswith("puqvpn_database_size_bytes ") and int(line.split()[1]) > 0 for line in lines)


def test_label_values_are_escaped():
    from puqvpn.views.metrics import _label
    assert _label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


# -- the traffic panels of the pages ----------------------------------------------------------

def _traffic(db, client, rx, tx):
    from puqvpn import settings as settings_module
    ctx = Context(db, settings_module.load(environ={}), FakeRunner())
    accounting.record(ctx, [accounting.Sample(client["id"], "wg:1", rx, tx, int(time.time()))])


def test_client_page_charts_are_inline_svg(logged_in, db, make_client):
    alice = make_client("alice")
    _traffic(db, alice, 2_000_000, 9_000_000)
    page = logged_in.client.get(f"/traffic/clients/{alice['id']}", headers={"HX-Request": "true"})
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and text.count("<svg") == 2
    assert "Traffic by day, last 30 days" in text and "9.0 MB down, 2.0 MB up" in text
    image = logged_in.client.get(f"/traffic/clients/{alice['id']}/month.svg")
    assert image.mimetype == "image/svg+xml" and b"Traffic by month" in image.data
    assert logged_in.client.get("/traffic/clients/999/day.svg").status_code == 404


def test_dashboard_panel_shows_totals_online_and_top_clients(logged_in, db, make_client):
    alice, bob = make_client("alice"), make_client("bob")
    _traffic(db, alice, 1000, 3_000_000)
    _traffic(db, bob, 10, 20)
    text = logged_in.client.get("/traffic/dashboard", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'id="top-clients"' in text
    assert text.index(">alice<") < text.index(">bob<")
    assert '<span id="online-count">2</span> of 2 active clients' in text


def test_interface_classes_panel_without_a_live_system(logged_in, wg0):
    text = logged_in.client.get(f"/traffic/interfaces/{wg0['id']}/classes").get_data(as_text=True)
    assert "kept off the live system" in text


def test_traffic_panels_need_a_login(client, wg0):
    assert client.get(f"/traffic/interfaces/{wg0['id']}/classes").status_code in (302, 401)
    assert client.get("/traffic/dashboard").status_code in (302, 401)

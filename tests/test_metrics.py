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

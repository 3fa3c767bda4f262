"""Port forwards: the rows, what they may not take, and the admin's page."""

import pytest

from puqvpn.services import clients, interfaces, portforwards
from puqvpn.services.validation import ValidationError

from .conftest import csrf_token


@pytest.fixture
def app(app):
    if "portforwards" not in app.blueprints:
        from puqvpn.views import portforwards as view
        app.register_blueprint(view.bp)     # until puqvpn.BLUEPRINTS lists it
    return app


@pytest.fixture
def alice(make_client):
    return make_client("alice")


def test_a_forward_points_a_server_port_at_a_client_port(db, wg0, alice):
    row = portforwards.create(db, wg0["id"], {"client_id": alice["id"], "proto": "tcp", "ext_port": "8080",
                                              "dest_port": "80"})
    assert (row["proto"], row["ext_port"], row["dest_port"], row["client_id"]) == ("tcp", 8080, 80, alice["id"])
    [listed] = portforwards.list_for_interface(db, wg0["id"])
    assert listed["client_name"] == "alice" and listed["client_ip"] == alice["ip"]


def test_the_client_port_defaults_to_the_server_port(db, wg0, alice):
    row = portforwards.create(db, wg0["id"], {"client_id": alice["id"], "proto": "udp", "ext_port": "27015"})
    assert row["dest_port"] == 27015


@pytest.mark.parametrize("proto, port, message", [
    ("tcp", "22", "reserved"),                 # SSH: never lock the admin out
    ("udp", "51820", "reserved"),              # the interface's own WireGuard port
    ("udp", "500", "reserved"),                # IKE
    ("tcp", "8080", "reserved"),               # the panel's own port
    ("tcp", "0", "1 to 65535"),
    ("tcp", "8443x", "whole number"),
])
def test_ports_the_server_needs_are_refused(db, wg0, alice, proto, port, message):
    with pytest.raises(ValidationError) as error:
        portforwards.create(db, wg0["id"], {"client_id": alice["id"], "proto": proto, "ext_port": port},
                            panel_port=8080)
    assert message in error.value.fields["ext_port"]
    assert portforwards.list_for_interface(db, wg0["id"]) == []


def test_a_port_can_be_forwarded_only_once(db, wg0, alice, make_client):
    bob = make_client("bob")
    portforwards.create(db, wg0["id"], {"client_id": alice["id"], "proto": "tcp", "ext_port": "2222"})
    with pytest.raises(ValidationError, match="already goes to alice"):
        portforwards.create(db, wg0["id"], {"client_id": bob["id"], "proto": "tcp", "ext_port": "2222"})
    portforwards.create(db, wg0["id"], {"client_id": bob["id"], "proto": "udp", "ext_port": "2222"})


def test_the_client_must_belong_to_the_interface(db, wg0):
    wg1 = interfaces.create(db, {"name": "wg1", "address": "10.9.0.1/24", "listen_port": "51821",
                                 "endpoint": "vpn.example.com"})
    other = clients.create(db, {"interface": wg1["id"], "name": "other"})
    with pytest.raises(ValidationError) as error:
        portforwards.create(db, wg0["id"], {"client_id": other["id"], "proto": "tcp", "ext_port": "3000"})
    assert "client_id" in error.value.fields
    with pytest.raises(ValidationError, match="tcp or udp"):
        portforwards.create(db, wg0["id"], {"client_id": other["id"], "proto": "icmp", "ext_port": "3000"})


def test_deleting_the_client_deletes_its_forwards(db, wg0, alice):
    portforwards.create(db, wg0["id"], {"client_id": alice["id"], "proto": "tcp", "ext_port": "3000"})
    clients.delete(db, alice["id"])
    assert portforwards.list_for_interface(db, wg0["id"]) == []


def test_the_admin_adds_and_removes_a_forward_on_the_page(logged_in, db, wg0, alice):
    page = f"/interfaces/{wg0['id']}/port-forwards/"
    assert "No port forwards yet" in logged_in.client.get(page).get_data(as_text=True)
    token = csrf_token(logged_in.client, page)
    response = logged_in.client.post(page, data={"csrf_token": token, "client_id": alice["id"], "proto": "tcp",
                                                 "ext_port": "8000", "dest_port": "80"})
    assert response.status_code == 302
    text = logged_in.client.get(page).get_data(as_text=True)
    assert "tcp/8000" in text and "alice" in text

    response = logged_in.client.post(page, data={"csrf_token": token, "client_id": alice["id"], "proto": "tcp",
                                                 "ext_port": "22"})
    assert response.status_code == 422 and "reserved" in response.get_data(as_text=True)

    [row] = portforwards.list_for_interface(db, wg0["id"])
    response = logged_in.client.post(f"{page}{row['id']}/delete", data={"csrf_token": token})
    assert response.status_code == 302
    assert portforwards.list_for_interface(db, wg0["id"]) == []


def test_a_viewer_sees_forwards_but_cannot_add_them(auth, db, wg0, alice):
    auth.login("watcher", "correct horse battery", role="viewer")
    page = f"/interfaces/{wg0['id']}/port-forwards/"
    assert "New port forward" not in auth.client.get(page).get_data(as_text=True)
    token = csrf_token(auth.client, page)
    response = auth.client.post(page, data={"csrf_token": token, "client_id": alice["id"], "proto": "tcp",
                                            "ext_port": "8000"})
    assert response.status_code in (302, 403)
    assert portforwards.list_for_interface(db, wg0["id"]) == []

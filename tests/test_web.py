"""The panel in a test client: login, interfaces and clients, as an admin would click through."""

import re

from puqvpn.services import clients, interfaces


def test_a_protected_page_without_login_redirects_to_the_login_page(client):
    response = client.get("/clients/")
    assert response.status_code == 302
    assert "/auth/login" in response.headers["Location"]


def test_a_post_without_a_csrf_token_is_refused(logged_in, client):
    response = client.post("/interfaces/new", data={"name": "wg0"})
    assert response.status_code == 400
    assert b"security token" in response.data


def test_wrong_password_gives_the_same_message_as_an_unknown_user(auth, client):
    auth.login()
    client.post("/auth/logout", data={"csrf_token": re.search(
        r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)})
    wrong_password = auth.attempt("admin", "not the password at all")
    unknown_user = auth.attempt("nobody", "whatever it is")
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert b"Wrong username or password." in wrong_password.data
    assert b"Wrong username or password." in unknown_user.data


def test_login_logout_and_session_cookie_flags(auth, client):
    response = auth.login()
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/").status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    client.post("/auth/logout", data={"csrf_token": token})
    assert client.get("/").status_code == 302


def test_a_password_change_ends_other_sessions(app, auth, client):
    auth.login()
    other = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', other.get("/auth/login").get_data(as_text=True)).group(1)
    other.post("/auth/login", data={"username": "admin", "password": "correct horse battery", "csrf_token": token})
    assert other.get("/").status_code == 200
    response = auth.post("/auth/password", {"current": "correct horse battery", "new": "a new long password",
                                            "confirm": "a new long password"})
    assert response.status_code == 302
    assert other.get("/").status_code == 302


def test_creating_an_interface_through_the_form(logged_in, db):
    response = logged_in.post("/interfaces/new", {
        "name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820", "endpoint": "vpn.example.com",
        "dns": "1.1.1.1", "mtu": "1420", "keepalive": "25", "allowed_ips": "0.0.0.0/0, ::/0",
        "default_down_mbit": "0", "default_up_mbit": "0", "nat": "on", "enabled": "on"})
    assert response.status_code == 302
    created = interfaces.get(db, "wg0")
    assert created["address"] == "10.8.0.1/24" and created["nat"] == 1 and created["client_to_client"] == 0


def test_an_invalid_field_is_shown_next_to_the_field(logged_in):
    response = logged_in.post("/interfaces/new", {"name": "wg0", "address": "10.8.0.1/33", "listen_port": "22",
                                                  "endpoint": "vpn.example.com", "mtu": "1420"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="e-address"' in page and 'id="e-listen_port"' in page
    assert "reserved" in page


def test_creating_a_client_and_downloading_its_profile(logged_in, wg0, db):
    response = logged_in.post("/clients/new", {"interface": wg0["id"], "name": "alice"})
    assert response.status_code == 302
    alice = clients.get(db, "alice")
    assert alice["ip"] == "10.8.0.2"
    page = logged_in.client.get(f"/clients/{alice['id']}").get_data(as_text=True)
    assert "wireguard.svg" in page
    conf = logged_in.client.get(f"/clients/{alice['id']}/wireguard.conf")
    assert conf.headers["Content-Disposition"] == 'attachment; filename="alice.conf"'
    assert "Address = 10.8.0.2/32" in conf.get_data(as_text=True)
    svg = logged_in.client.get(f"/clients/{alice['id']}/wireguard.svg")
    assert svg.mimetype == "image/svg+xml" and b"<svg" in svg.data


def test_the_client_list_searches_and_swaps_only_the_table(logged_in, make_client):
    make_client("alice")
    make_client("bob")
    full = logged_in.client.get("/clients/?q=ali").get_data(as_text=True)
    assert "alice" in full and ">bob<" not in full and "<nav>" in full
    partial = logged_in.client.get("/clients/?q=bob", headers={"HX-Request": "true", "HX-Target": "client-table"})
    text = partial.get_data(as_text=True)
    assert text.lstrip().startswith('<div id="client-table">') and "bob" in text and "alice" not in text


def test_suspend_resume_and_delete(logged_in, make_client, db):
    alice = make_client("alice")
    logged_in.post(f"/clients/{alice['id']}/suspend")
    assert clients.get(db, "alice")["suspended_reason"] == "admin"
    logged_in.post(f"/clients/{alice['id']}/resume")
    assert clients.get(db, "alice")["suspended_reason"] is None
    logged_in.post(f"/clients/{alice['id']}/delete")
    assert clients.get(db, "alice") is None


def test_deleting_an_interface_with_clients_asks_first(logged_in, wg0, make_client, db):
    make_client("alice")
    page = logged_in.client.get(f"/interfaces/{wg0['id']}/delete").get_data(as_text=True)
    assert "still has 1 client(s)" in page
    refused = logged_in.post(f"/interfaces/{wg0['id']}/delete", {"confirm": ""})
    assert refused.status_code == 422 and interfaces.get(db, "wg0") is not None
    logged_in.post(f"/interfaces/{wg0['id']}/delete", {"confirm": "wg0"})
    assert interfaces.get(db, "wg0") is None and clients.get(db, "alice") is None


def test_the_error_banner_names_the_fields_to_correct(logged_in):
    response = logged_in.post("/interfaces/new", {"name": "wg0", "address": "10.8.0.1/33", "listen_port": "22",
                                                  "endpoint": "vpn.example.com", "mtu": "1420", "keepalive": "25",
                                                  "allowed_ips": "0.0.0.0/0"})
    assert "Please correct these fields: address, listen port." in response.get_data(as_text=True)

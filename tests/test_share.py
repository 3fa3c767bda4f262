"""One-time share links: expiry, uses, revocation, the public page and the operator's pages."""

import datetime
import re

import pytest

from puqvpn.services import share_links, wgconfig
from puqvpn.services.validation import ValidationError
from tests.conftest import csrf_token

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def alice(make_client):
    return make_client("alice")


def open_setup(client, token):
    """Press "Show my VPN setup": one use; returns the setup page's URL (with its visit key)."""
    response = client.post(f"/s/{token}")
    assert response.status_code == 303
    return response.headers["Location"]


# ------------------------------------------------------------------ the service

def test_a_link_stores_only_the_hash_of_its_long_random_token(db, alice):
    row, token = share_links.create(db, alice["id"], 24, 1)
    assert len(token) >= 43 and token not in str(row)
    assert share_links.find(db, token)["id"] == row["id"]
    assert share_links.find(db, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert share_links.find(db, "") is None


def test_a_link_expires_after_its_hours(db, alice):
    row, _token = share_links.create(db, alice["id"], 2, 5, now=NOW)
    assert row["expires_at"] == "2026-12-04T14:00:00Z"
    assert share_links.state(row, NOW + datetime.timedelta(hours=1, minutes=59)) == "active"
    assert share_links.state(row, NOW + datetime.timedelta(hours=2)) == "expired"
    assert share_links.consume(db, row, NOW + datetime.timedelta(hours=3)) is None


def test_a_link_works_as_many_times_as_allowed(db, alice):
    row, _token = share_links.create(db, alice["id"], 24, 2, now=NOW)
    assert share_links.consume(db, row, NOW)["uses"] == 1
    assert share_links.consume(db, row, NOW)["uses"] == 2
    assert share_links.consume(db, row, NOW) is None
    assert share_links.state(share_links.get(db, row["id"]), NOW) == "used_up"


def test_a_revoked_link_is_dead(db, alice):
    row, _token = share_links.create(db, alice["id"], 24, 3)
    share_links.revoke(db, row["id"])
    assert share_links.state(share_links.get(db, row["id"])) == "revoked"
    assert share_links.consume(db, row) is None


def test_lifetime_and_uses_are_bounded(db, alice):
    for hours, uses, field in ((0, 1, "expires_in_hours"), (721, 1, "expires_in_hours"), ("x", 1, "expires_in_hours"),
                               (1, 0, "max_uses"), (1, 101, "max_uses")):
        with pytest.raises(ValidationError) as caught:
            share_links.create(db, alice["id"], hours, uses)
        assert field in caught.value.fields
    assert db.execute("SELECT count(*) FROM share_links").fetchone()[0] == 0


def test_a_visit_key_is_bound_to_its_link_and_runs_out(db, alice):
    row, _token = share_links.create(db, alice["id"], 24, 1, now=NOW)
    other, _ = share_links.create(db, alice["id"], 24, 1, now=NOW)
    key = share_links.visit_key("secret", row, NOW)
    assert share_links.visit_valid("secret", row, key, NOW + datetime.timedelta(minutes=29))
    assert not share_links.visit_valid("secret", row, key, NOW + datetime.timedelta(minutes=31))
    assert not share_links.visit_valid("secret", other, key, NOW)
    assert not share_links.visit_valid("another secret", row, key, NOW)
    assert not share_links.visit_valid("secret", row, key.replace(".", ".0"), NOW)
    share_links.revoke(db, row["id"])
    assert not share_links.visit_valid("secret", share_links.get(db, row["id"]), key, NOW)


# ------------------------------------------------------------------ the public page

def test_the_public_page_needs_no_login_and_a_preview_burns_no_use(client, db, alice):
    row, token = share_links.create(db, alice["id"], 24, 1)
    for _ in range(3):     # a messenger's link preview, the person opening it, a reload
        landing = client.get(f"/s/{token}")
        assert landing.status_code == 200 and b"Show my VPN setup" in landing.data
    assert share_links.get(db, row["id"])["uses"] == 0


def test_opening_the_setup_counts_one_use_and_downloads_in_that_visit_are_free(client, db, wg0, alice):
    row, token = share_links.create(db, alice["id"], 24, 1)
    setup_url = open_setup(client, token)
    page = client.get(setup_url)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "VPN setup for alice" in text and 'id="qr"' in text
    assert share_links.get(db, row["id"])["uses"] == 1

    conf_url = re.search(r'href="([^"]+wireguard\.conf[^"]*)"', text).group(1).replace("&amp;", "&")
    for _ in range(2):
        download = client.get(conf_url)
        assert download.status_code == 200
        assert download.get_data(as_text=True) == wgconfig.render_client_config(wg0, alice)
    assert share_links.get(db, row["id"])["uses"] == 1
    assert client.get(setup_url).status_code == 200          # a reload within the visit

    # The single use is spent: a new visit is refused, and a download without the visit key too.
    assert client.get(f"/s/{token}").status_code == 410
    assert client.post(f"/s/{token}").status_code == 410
    assert client.get(f"/s/{token}/wireguard.conf").status_code == 410
    assert client.get(conf_url.replace("v=", "v=1")).status_code == 410


def test_expired_used_up_revoked_and_unknown_links_get_the_same_plain_410_page(client, db, alice):
    expired, expired_token = share_links.create(db, alice["id"], 1, 1)
    db.execute("UPDATE share_links SET expires_at = '2020-01-01T00:00:00Z' WHERE id = ?", [expired["id"]])
    revoked, revoked_token = share_links.create(db, alice["id"], 1, 1)
    share_links.revoke(db, revoked["id"])
    _used, used_token = share_links.create(db, alice["id"], 1, 1)
    open_setup(client, used_token)
    for token in (expired_token, revoked_token, used_token, "no-such-token"):
        response = client.get(f"/s/{token}")
        assert response.status_code == 410
        assert b"This link is no longer valid" in response.data
        assert b"alice" not in response.data


def test_revoking_ends_a_visit_that_is_under_way(client, db, alice):
    row, token = share_links.create(db, alice["id"], 24, 1)
    setup_url = open_setup(client, token)
    share_links.revoke(db, row["id"])
    assert client.get(setup_url).status_code == 410


def test_ikev2_shows_credentials_and_the_ca_where_the_interface_has_it(client, db, wg0, alice, app):
    from puqvpn.services import interfaces, pki
    pki.generate_ca(db, "Test CA", "puqvpn", key_type="ecdsa-p256")
    pki.generate_server(db, "vpn.example.com", "192.0.2.1")
    _row, token = share_links.create(db, alice["id"], 24, 1)
    text = client.get(open_setup(client, token)).get_data(as_text=True)
    assert 'id="ikev2"' not in text              # wg0 has no IKEv2 yet

    interfaces.update(db, wg0["id"], {"ikev2_enabled": True})
    _row, token = share_links.create(db, alice["id"], 24, 1)
    text = client.get(open_setup(client, token), headers={"User-Agent": "Mozilla/5.0 (Linux; Android 14)"}
                      ).get_data(as_text=True)
    assert 'id="ikev2"' in text and alice["password"] in text and alice["username"] in text
    # Android's steps come first for an Android phone.
    assert text.index('id="steps-android"') < text.index('id="steps-ios"')
    ca_url = re.search(r'href="([^"]+ca\.crt[^"]*)"', text).group(1).replace("&amp;", "&")
    assert client.get(ca_url).data == pki.to_der(pki.get(db, "ca")["cert_pem"])     # DER, as phones install it
    # The profiles for every platform are offered, and download within the visit.
    for kind in ("sswan", "mobileconfig", "windows", "nmconnection"):
        url = re.search(rf'href="([^"]+/ikev2/{kind}\?[^"]*)"', text).group(1).replace("&amp;", "&")
        download = client.get(url)
        assert download.status_code == 200 and download.headers["Content-Disposition"].startswith("attachment")


# ------------------------------------------------------------------ operators

def test_an_operator_creates_a_link_on_the_client_page_and_sees_it_once(logged_in, client, db, alice):
    page = client.get(f"/clients/{alice['id']}").get_data(as_text=True)
    assert 'id="share-links"' in page and 'id="create-share-link"' in page
    created = logged_in.post(f"/clients/{alice['id']}/share-links", data={"expires_in_hours": "48", "max_uses": "2"})
    assert created.status_code == 200
    url = re.search(r'value="(http://localhost/s/[^"]+)" id="share-url"', created.get_data(as_text=True)).group(1)
    token = url.rsplit("/", 1)[1]
    assert share_links.find(db, token)["max_uses"] == 2
    # The client page lists it, without the token.
    page = client.get(f"/clients/{alice['id']}").get_data(as_text=True)
    assert "0 / 2" in page and token not in page


def test_an_operator_revokes_a_link_from_the_list(logged_in, client, db, alice):
    row, token = share_links.create(db, alice["id"], 24, 1)
    listing = client.get("/share-links/").get_data(as_text=True)
    assert f'id="share-link-{row["id"]}"' in listing
    response = logged_in.post(f"/share-links/{row['id']}/revoke")
    assert response.status_code == 302
    assert share_links.get(db, row["id"])["revoked_at"] is not None
    assert f'id="share-link-{row["id"]}"' not in client.get("/share-links/").get_data(as_text=True)
    assert f'id="share-link-{row["id"]}"' in client.get("/share-links/?all=1").get_data(as_text=True)
    assert client.get(f"/s/{token}").status_code == 410


def test_a_viewer_cannot_make_or_revoke_links(auth, client, db, alice):
    auth.login("watcher", "correct horse battery", role="viewer")
    row, _token = share_links.create(db, alice["id"], 24, 1)
    assert 'id="share-links"' not in client.get(f"/clients/{alice['id']}").get_data(as_text=True)
    token = csrf_token(client, "/auth/password")
    assert client.post(f"/share-links/{row['id']}/revoke", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/clients/{alice['id']}/share-links", data={"csrf_token": token}).status_code == 403
    assert share_links.get(db, row["id"])["revoked_at"] is None

"""The IKEv2 pages: certificates in two buttons, downloads, advanced settings, sessions and profiles."""

import plistlib

import pytest
from cryptography import x509

from puqvpn.services import interfaces, pki, strongswan


@pytest.fixture
def ikev2(app, tmp_path, logged_in):
    # no charon here: a socket path nobody serves
    app.config["PUQVPN"]["VICI_SOCKET"] = str(tmp_path / "no-charon.vici")
    return logged_in


def generate_both(auth):
    auth.post("/ikev2/ca/generate", {"common_name": "Test CA", "organization": "Test Org",
                                     "key_type": "ecdsa-p256"})
    return auth.post("/ikev2/server/generate", {"domain": "vpn.example.com", "ipv4": "203.0.113.7"})


def test_the_page_offers_the_ca_first_and_says_charon_is_down(ikev2, client):
    page = client.get("/ikev2/").get_data(as_text=True)
    assert "Generate a root CA" in page and "Generate or import the root CA first" in page
    assert "not running" in page


def test_two_buttons_make_both_certificates(ikev2, client, db):
    response = generate_both(ikev2)
    assert response.status_code == 302
    assert pki.ready(db)
    page = client.get("/ikev2/").get_data(as_text=True)
    assert "CN=vpn.example.com" in page and pki.cert_info(pki.get(db, "server")["cert_pem"])["sha256"] in page


def test_bad_ca_details_are_shown_next_to_their_field(ikev2, db):
    response = ikev2.post("/ikev2/ca/generate", {"common_name": "Test CA", "organization": "Org",
                                                 "country": "Germany"})
    assert response.status_code == 422
    assert "Two letters" in response.get_data(as_text=True)
    assert pki.get(db, "ca") is None


def test_ca_downloads_and_the_key_only_after_confirmation(ikev2, client, db):
    generate_both(ikev2)
    pem = client.get("/ikev2/ca.pem")
    assert pem.mimetype == "application/x-pem-file" and b"BEGIN CERTIFICATE" in pem.data
    der = client.get("/ikev2/ca.crt")
    assert x509.load_der_x509_certificate(der.data).subject.rfc4514_string() == "CN=Test CA,O=Test Org"
    assert "attachment" in der.headers["Content-Disposition"]
    refused = ikev2.post("/ikev2/ca-key", {})
    assert refused.status_code == 422 and b"PRIVATE KEY" not in refused.data
    key = ikev2.post("/ikev2/ca-key", {"confirm": "1"})
    assert key.data.decode() == pki.get(db, "ca")["key_pem"]


def test_deleting_the_ca_needs_confirmation_and_takes_the_server_certificate_along(ikev2, db):
    generate_both(ikev2)
    assert ikev2.post("/ikev2/ca/delete", {}).status_code == 422
    assert pki.ready(db)
    assert ikev2.post("/ikev2/ca/delete", {"confirm": "1"}).status_code == 302
    assert pki.get(db, "ca") is None and pki.get(db, "server") is None


def test_advanced_settings_save_refuse_and_reset(ikev2, client, db):
    page = client.get("/ikev2/settings").get_data(as_text=True)
    assert "aes256-sha1-modp1024" in page and "Windows built-in client" in page
    bad = ikev2.post("/ikev2/settings", {"ike_proposals": "aes256-sha256\n}", "esp_proposals": "aes256gcm16",
                                         "dpd_delay": "30", "ike_rekey_time": "14400", "child_rekey_time": "3600"})
    assert bad.status_code == 422 and strongswan.get_options(db) == strongswan.DEFAULT_OPTIONS
    good = ikev2.post("/ikev2/settings", {"ike_proposals": "aes256-sha256-modp2048\naes256-sha1-modp1024",
                                          "esp_proposals": "aes256-sha256", "dpd_delay": "60",
                                          "ike_rekey_time": "0", "child_rekey_time": "3600", "mobike": "on"})
    assert good.status_code == 302
    options = strongswan.get_options(db)
    assert options["ike_proposals"] == ["aes256-sha256-modp2048", "aes256-sha1-modp1024"]
    assert options["mobike"] is True and options["fragmentation"] is False
    ikev2.post("/ikev2/settings/reset")
    assert strongswan.get_options(db) == strongswan.DEFAULT_OPTIONS


def test_sessions_page_says_why_it_has_nothing(ikev2, client):
    page = client.get("/ikev2/sessions").get_data(as_text=True)
    assert "not running" in page


def test_profile_downloads_for_a_client(ikev2, client, db, wg0, make_client):
    interfaces.update(db, wg0["id"], {"ikev2_enabled": "1"})
    generate_both(ikev2)
    alice = make_client("alice")
    response = client.get(f"/ikev2/clients/{alice['id']}/mobileconfig")
    assert response.mimetype == "application/x-apple-aspen-config"
    assert 'filename="alice.mobileconfig"' in response.headers["Content-Disposition"]
    assert plistlib.loads(response.data)["PayloadContent"][1]["IKEv2"]["AuthName"] == alice["username"]
    sswan = client.get(f"/ikev2/clients/{alice['id']}/sswan")
    assert sswan.mimetype == "application/vnd.strongswan.profile"
    assert client.get(f"/ikev2/clients/{alice['id']}/exe").status_code == 404
    assert client.get("/ikev2/clients/9999/sswan").status_code == 404

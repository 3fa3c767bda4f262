"""A share link opened on a phone, in a real headless Chromium: QR code, .conf download, then gone.

The link is made through the HTTP API, as a billing system would.
Screenshots land in test-artifacts/share-*.png.
"""

import subprocess

import pytest
from playwright.sync_api import expect

from puqvpn.services import clients, interfaces, tokens, wgconfig
from tests.browser import browser_type_launch_args, live_server, snap  # noqa: F401

pytestmark = pytest.mark.browser

ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0 Mobile Safari/537.36")


def decode_qr(png_path):
    """The text of the QR code in a PNG, read by zbar as a phone's camera would."""
    result = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sbinary", str(png_path)],
                            capture_output=True, timeout=30, check=True)
    return result.stdout.decode()


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True, user_agent=ANDROID, accept_downloads=True)
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def test_a_customer_opens_a_share_link_on_a_phone(live_server, phone, tmp_path):
    db = live_server.db
    wg0 = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                 "endpoint": "vpn.example.com", "dns": "1.1.1.1"})
    alice = clients.create(db, {"interface": wg0["id"], "name": "alice"})
    _row, token = tokens.create(db, "billing", "operator")

    made = phone.request.post(f"{live_server.url}/api/v1/clients/alice/share-links",
                              headers={"Authorization": f"Bearer {token}"},
                              data={"expires_in_hours": 24, "max_uses": 1})
    assert made.status == 201
    url = made.json()["url"]
    assert url.startswith(live_server.url + "/s/")

    # The landing page: opening it spends nothing (so a messenger's preview cannot burn the link).
    phone.goto(url)
    expect(phone.locator("h1")).to_have_text("Your VPN setup")
    snap(phone, "share-1-landing")

    phone.click("#open-setup")
    expect(phone.locator("h1")).to_have_text("VPN setup for alice")
    expect(phone.locator("#qr")).to_be_visible()
    # Nothing is wider than the phone's screen.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    snap(phone, "share-2-setup")

    config = wgconfig.render_client_config(wg0, alice)
    qr_png = tmp_path / "qr.png"
    phone.locator("#qr").screenshot(path=str(qr_png))
    assert decode_qr(qr_png).strip() == config.strip()

    with phone.expect_download() as download:
        phone.click("#download-conf")
    assert download.value.suggested_filename.endswith(".conf")
    assert open(download.value.path()).read() == config

    assert phone.errors == []      # no failed loads, no CSP violations

    # The one use is spent: the link now shows the plain "no longer valid" page.
    response = phone.goto(url)
    assert response.status == 410
    expect(phone.locator("h1")).to_have_text("This link is no longer valid")
    snap(phone, "share-3-gone")


def test_where_ikev2_is_on_the_page_offers_the_ca_and_the_phones_profile(live_server, phone):
    from puqvpn.services import pki, share_links
    db = live_server.db
    wg0 = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                 "endpoint": "vpn.example.com", "ikev2_enabled": True})
    bob = clients.create(db, {"interface": wg0["id"], "name": "bob"})
    pki.generate_ca(db, "Example VPN CA", "Example", key_type="ecdsa-p256")
    pki.generate_server(db, "vpn.example.com", "192.0.2.1")
    _row, token = share_links.create(db, bob["id"], 24, 1)

    phone.goto(f"{live_server.url}/s/{token}")
    phone.click("#open-setup")
    expect(phone.locator("#ikev2-password")).to_have_text(bob["password"])
    expect(phone.locator("#steps-android")).to_have_attribute("open", "")     # an Android phone: its steps first
    snap(phone, "share-4-ikev2")
    with phone.expect_download() as download:
        phone.click("#download-ca")
    assert open(download.value.path(), "rb").read() == pki.to_der(pki.get(db, "ca")["cert_pem"])
    with phone.expect_download() as download:
        phone.click("#download-android")
    assert download.value.suggested_filename == "bob.sswan"
    assert phone.errors == []


def test_an_admin_makes_and_revokes_a_link_on_the_client_page(live_server, page):
    from tests.browser import log_in
    from puqvpn.services import share_links
    db = live_server.db
    wg0 = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                 "endpoint": "vpn.example.com"})
    carol = clients.create(db, {"interface": wg0["id"], "name": "carol"})
    page.on("dialog", lambda dialog: dialog.accept())        # the revoke button asks first
    log_in(page, live_server)

    page.goto(f"{live_server.url}/clients/{carol['id']}")
    page.fill("#share-links input[name=expires_in_hours]", "12")
    page.fill("#share-links input[name=max_uses]", "3")
    snap(page, "share-5-client-panel")
    page.click("#create-share-link")
    url = page.locator("#share-url").input_value()
    assert url.startswith(live_server.url + "/s/")
    snap(page, "share-6-created")
    link = share_links.find(db, url.rsplit("/", 1)[1])
    assert link["max_uses"] == 3

    page.goto(f"{live_server.url}/clients/{carol['id']}")
    row = page.locator(f"#share-link-{link['id']}")
    expect(row).to_contain_text("0 / 3")
    row.locator("button", has_text="Revoke").click()
    expect(page.locator(f"#share-link-{link['id']}")).to_have_count(0)
    assert share_links.get(db, link["id"])["revoked_at"] is not None
    assert page.request.get(url).status == 410

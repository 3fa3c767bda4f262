"""The admin's first session in a real headless Chromium: from login to logout.

Screenshots of every major step land in test-artifacts/.
"""

import re
import shutil
import subprocess

import pytest
from playwright.sync_api import expect

from puqvpn.services import interfaces
from tests.browser import browser_type_launch_args, live_server, log_in, page_errors, snap  # noqa: F401

pytestmark = pytest.mark.browser


def decode_qr(png_path):
    """The text of the QR code in a PNG, read by zbar, as a phone's camera would."""
    result = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sbinary", str(png_path)],
                            capture_output=True, timeout=30, check=True)
    return result.stdout.decode()


def test_an_admin_sets_up_an_interface_and_clients(live_server, page, page_errors, tmp_path):
    page.on("dialog", lambda dialog: dialog.accept())   # hx-confirm asks through window.confirm
    log_in(page, live_server)
    expect(page.locator("h1")).to_have_text("Dashboard")
    icon = page.request.get(page.locator("link[rel=icon]").evaluate("link => link.href"))
    assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml")
    snap(page, "01-dashboard-empty")

    # An interface, through its form; the defaults are prefilled.
    page.click("nav >> text=Interfaces")
    page.click("text=New interface")
    expect(page.locator("#f-name")).to_have_value("wg0")
    page.fill("#f-label", "Office")
    page.fill("#f-endpoint", "vpn.example.com")
    snap(page, "02-interface-form")
    page.click("#interface-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("wg0")
    expect(page.locator(".flash.success")).to_contain_text("Interface wg0 created.")
    snap(page, "03-interface-created")

    # Two clients: alice takes the lowest free address, bob picks one.
    page.click("text=New client")
    page.fill("#f-name", "alice")
    page.click("#client-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("alice")
    page.goto(live_server.url + "/clients/new")
    page.fill("#f-name", "bob")
    page.fill("#f-ip", "10.8.0.1")
    page.click("#client-form button[type=submit]")
    # The gateway is refused; the error shows next to the field, the typed name is kept.
    expect(page.locator("#f-ip + small#e-ip")).to_have_text("that is the gateway address")
    expect(page.locator("#f-ip")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-name")).to_have_value("bob")
    snap(page, "04-client-form-error")
    page.fill("#f-ip", "10.8.0.50")
    page.click("#client-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("bob")

    # Active search filters as one types, swapping only the table.
    page.click("nav >> text=Clients")
    rows = page.locator("#client-table tbody tr")
    expect(rows).to_have_count(2)
    # Sorting swaps the table too, and the search that follows keeps the order.
    page.click("#client-table thead >> text=Address")
    expect(page.locator("#client-table thead")).to_contain_text("Address ▲")
    page.click("#client-table thead >> text=Address")
    expect(page.locator("#client-table thead")).to_contain_text("Address ▼")
    expect(rows.first).to_contain_text("bob")
    page.evaluate("window.stillTheSamePage = true")
    page.locator("#client-search").press_sequentially("ali", delay=50)
    expect(page.locator("#client-table tbody")).not_to_contain_text("bob")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("alice")
    expect(rows.first).to_contain_text("10.8.0.2")
    assert page.evaluate("window.stillTheSamePage") is True, "the search reloaded the whole page"
    assert "q=ali" in page.url, "the search is not in the address bar, so it cannot be bookmarked"
    assert "sort=ip" in page.url and "order=desc" in page.url
    snap(page, "05-client-search")

    # alice's page: the QR code loads as an SVG of real size.
    page.click("#client-table >> text=alice")
    expect(page.locator("h1")).to_contain_text("alice")
    qr = page.locator("img#qr")
    expect(qr).to_be_visible()
    # decode() waits for the image and fails if it cannot be loaded or drawn.
    width, height = qr.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
    assert width > 100 and height == width
    svg = page.request.get(qr.evaluate("img => img.src"))
    assert svg.headers["content-type"].startswith("image/svg+xml")
    snap(page, "06-client-page")

    # The .conf downloads under a name the WireGuard apps accept as a tunnel name.
    with page.expect_download() as info:
        page.click("#download-conf")
    download = info.value
    assert download.suggested_filename == "alice.conf"
    conf = (tmp_path / "alice.conf")
    download.save_as(conf)
    text = conf.read_text()
    assert text.startswith("[Interface]\n")
    assert "\n[Peer]\n" in text
    assert re.search(r"^Address = 10\.8\.0\.2/32$", text, re.M)
    assert re.search(r"^Endpoint = vpn\.example\.com:\d+$", text, re.M)
    wg0 = interfaces.get(live_server.db, "wg0")
    assert f"PublicKey = {wg0['public_key']}\n" in text

    # The QR on screen carries exactly the downloaded file.
    if shutil.which("zbarimg"):
        shot = tmp_path / "qr.png"
        qr.screenshot(path=str(shot))
        assert decode_qr(shot).rstrip("\n") == text.rstrip("\n")

    # Suspend alice (after the confirmation dialog).
    page.click("button:has-text('Suspend')")
    expect(page.locator("#client-status")).to_have_text("suspended")
    expect(page.locator("button:has-text('Resume')")).to_be_visible()
    snap(page, "07-client-suspended")

    # Edit a limit: it reads back as typed, not as the database's 20.0.
    page.click(".actions >> text=Edit")
    page.fill("#f-down_mbit", "20")
    page.click("#client-form button[type=submit]")
    expect(page.locator(".facts")).to_contain_text("↓ 20 Mbit/s · ↑ unlimited")
    page.click(".actions >> text=Edit")
    expect(page.locator("#f-down_mbit")).to_have_value("20")
    snap(page, "07b-client-edit")
    page.click("#client-form >> text=Cancel")
    expect(page.locator("h1")).to_contain_text("alice")

    # Delete bob through the confirmation page.
    page.click("nav >> text=Clients")
    page.click("#client-table >> text=bob")
    page.click("a:has-text('Delete')")
    expect(page.locator("h1")).to_have_text("Delete bob?")
    snap(page, "08-client-delete-confirm")
    page.click("#confirm-delete")
    expect(page.locator(".flash.success")).to_have_text("Client bob deleted.")
    expect(page.locator("#client-table tbody tr")).to_have_count(1)
    expect(page.locator("#client-table tbody")).to_contain_text("suspended")
    snap(page, "09-client-list-after-delete")

    page.click("nav >> text=Interfaces")
    snap(page, "10-interfaces")
    page.click("nav >> text=Dashboard")
    snap(page, "11-dashboard")

    # The same pages on a phone.
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("nav >> text=Clients")
    snap(page, "12-phone-client-list")
    page.click("#client-table >> text=alice")
    expect(page.locator("img#qr")).to_be_visible()
    snap(page, "13-phone-client-page")
    page.set_viewport_size({"width": 1280, "height": 720})

    # Log out from the account menu.
    page.click("nav details.dropdown summary:text-is('admin')")
    page.click("#logout")
    expect(page.locator("h1")).to_have_text("Log in")
    expect(page.locator(".flash")).to_contain_text("You are logged out.")
    page.goto(live_server.url + "/clients/")
    expect(page.locator("h1")).to_have_text("Log in")
    snap(page, "14-logged-out")

    assert page_errors == []


def test_forms_work_without_javascript(live_server, browser, tmp_path):
    interfaces.create(live_server.db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                       "endpoint": "vpn.example.com"})
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, live_server)

        page.goto(live_server.url + "/clients/new")
        page.fill("#f-name", "carol")
        page.fill("#f-ip", "10.9.0.7")
        page.click("#client-form button[type=submit]")
        expect(page.locator("#f-ip + small#e-ip")).to_have_text("must be inside the pool 10.8.0.0/24")
        expect(page.locator("#f-name")).to_have_value("carol")
        snap(page, "nojs-01-client-form-error")

        page.fill("#f-ip", "10.8.0.7")
        page.click("#client-form button[type=submit]")
        expect(page.locator("h1")).to_contain_text("carol")
        expect(page.locator("img#qr")).to_be_visible()
        snap(page, "nojs-02-client-page")

        # The search form falls back to a plain GET with its Filter button.
        page.goto(live_server.url + "/clients/")
        page.fill("#client-search", "nobody")
        page.click("form[role=search] button[type=submit]")
        expect(page.locator("#client-table")).to_contain_text("No clients match these filters.")
        page.fill("#client-search", "car")
        page.click("form[role=search] button[type=submit]")
        expect(page.locator("#client-table tbody tr")).to_have_count(1)
        snap(page, "nojs-03-client-search")
    finally:
        context.close()

"""The hardened web layer in a real Chromium: HTTPS through the TLS front, and every page under the CSP.

Chromium reports a Content-Security-Policy violation as a console error, so a
page that needed inline script or style would show up here.
"""


import pytest
from playwright.sync_api import expect

from puqvpn import create_app
from puqvpn.tls import start_tls
from tests.browser import browser_type_launch_args, live_server, log_in, page_errors  # noqa: F401

from .routes import login_as, routes, seed, url_for_rule
from .test_tls import self_signed

pytestmark = pytest.mark.browser


def test_logging_in_and_posting_forms_over_https(browser, tmp_path):
    cert, key = self_signed(tmp_path)
    app = create_app(INSTANCE_DIR=str(tmp_path / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                     TLS_CERT=str(cert), TLS_KEY=str(key))
    values, _tokens, _ids = seed(app)
    front = start_tls(app, "127.0.0.1", 0, str(cert), str(key), threads=4)
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        errors = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        base = f"https://127.0.0.1:{front.port}"
        page.goto(base + "/auth/login")
        page.fill("#username", "admin")
        page.fill("#password", "correct horse battery")
        page.click("form button[type=submit]")
        # The CSRF check on HTTPS needs the browser's Referer: the referrer policy must let it through.
        expect(page.locator("h1")).to_have_text("Dashboard")
        cookie = next(c for c in context.cookies() if c["name"] == "puqvpn_session")
        assert cookie["secure"] and cookie["httpOnly"]
        # An htmx form post (boosted) through the front.
        page.goto(base + f"/clients/{values['client_id']}")
        page.on("dialog", lambda dialog: dialog.accept())
        page.locator("form[action$='/suspend'] button").click()
        expect(page.locator(".flash").first).to_contain_text("suspended")
        assert errors == []
    finally:
        context.close()
        front.close()


def test_every_page_renders_in_chromium_without_a_csp_violation(live_server, page, page_errors):
    values, _tokens, ids = seed(live_server.app)
    # Pages that answer 200 with HTML for an admin (others are downloads, redirects or the API).
    probe = live_server.app.test_client()
    login_as(probe, ids["admin"])
    pages = []
    for endpoint, method, rule in routes(live_server.app):
        url = url_for_rule(rule, values)
        if method != "GET" or url.startswith("/api/") or endpoint in ("static", "auth.logout"):
            continue
        response = probe.get(url)
        if response.status_code == 200 and response.mimetype == "text/html":
            pages.append(url)
    assert len(pages) > 20
    log_in(page, live_server, "admin", "correct horse battery")
    for url in pages:
        page.goto(live_server.url + url)
        page.wait_for_load_state("load")
    assert page_errors == [], page_errors


def test_the_2fa_qr_code_loads_under_the_csp(live_server, page, page_errors):
    log_in(page, live_server)
    page.goto(live_server.url + "/auth/2fa/setup")
    image = page.locator("img[alt='QR code for the authenticator app']")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page_errors == []

"""Every route and API call, tried as nobody, a viewer, an operator and an admin.

The list of routes comes from the app's URL map, so a new route without an
entry in tests/routes.py RULES fails here until someone decides who may use it.
"""

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from puqvpn.views.auth import required_role

from .routes import (CHANGING, RANK, ROLES, RULES, csrf_token, is_login_redirect, login_as, make_app, routes,
                     seed, url_for_rule)

_collect_dir = Path(tempfile.mkdtemp(prefix="puqvpn-roles-"))
atexit.register(shutil.rmtree, _collect_dir, ignore_errors=True)
APP = make_app(_collect_dir)
ROUTES = routes(APP)


def test_every_route_has_an_access_rule():
    endpoints = {endpoint for endpoint, _method, _rule in ROUTES}
    unlisted = sorted(endpoints - set(RULES))
    assert unlisted == [], f"routes without an access rule in tests/routes.py RULES: {unlisted}"


def test_each_view_declares_the_role_its_rule_gives():
    from puqvpn.views import api
    api_roles = {f"api.{op['endpoint']}": (f"token:{op['role']}" if op["auth"] else "public")
                 for op in api.OPERATIONS}
    wrong = {}
    for endpoint, _method, _rule in ROUTES:
        if endpoint == "static":
            continue
        declared = api_roles[endpoint] if endpoint.startswith("api.") else \
            (required_role(APP.view_functions[endpoint]) or "public")
        if declared != RULES.get(endpoint):
            wrong[endpoint] = (declared, RULES.get(endpoint))
    assert wrong == {}, f"endpoint: (declared, expected) {wrong}"


def _request(client, method, url, token=None, api=False):
    if api:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method in CHANGING:
            return client.open(url, method=method, json={}, headers=headers)
        return client.open(url, method=method, headers=headers)
    if method in CHANGING:
        return client.open(url, method=method, data={"csrf_token": csrf_token(client)})
    return client.open(url, method=method)


CASES = [(endpoint, method) for endpoint, method, _rule in ROUTES if endpoint in RULES]


@pytest.mark.parametrize("endpoint, method", CASES, ids=[f"{m} {e}" for e, m in CASES])
def test_each_role_gets_exactly_what_the_rule_allows(tmp_path, endpoint, method):
    rule_text = RULES[endpoint]
    rule = next(r for e, m, r in ROUTES if e == endpoint and m == method)
    api = rule_text.startswith("token:") or endpoint.startswith("api.")
    app = None
    for who in ("nobody", *ROLES):
        # A fresh panel after every change that went through, so one role's delete
        # does not hide the next role's answer.
        if app is None:
            app = make_app(tmp_path / who)
            values, api_tokens, user_ids = seed(app)
        client = app.test_client()
        url = url_for_rule(rule, values)
        if api:
            response = _request(client, method, url, api_tokens.get(who), api=True)
        else:
            if who != "nobody":
                login_as(client, user_ids[who])
            response = _request(client, method, url)
        status = response.status_code
        assert status < 500, f"{who}: {method} {url} answered {status}"
        if rule_text == "public":
            allowed, refused = True, is_login_redirect(response)
        elif api:
            needed = rule_text.split(":", 1)[1]
            allowed = who != "nobody" and RANK[who] >= RANK[needed]
            refused = status == (401 if who == "nobody" else 403)
        else:
            allowed = who != "nobody" and RANK[who] >= RANK[rule_text]
            refused = is_login_redirect(response) if who == "nobody" else status == 403
        if allowed and rule_text == "public":
            assert not refused, f"{who} should reach the public {method} {url} but got {status}"
        elif allowed:
            assert not refused and status not in (401, 403) and not is_login_redirect(response), \
                f"{who} should reach {method} {url} ({rule_text}) but got {status}"
            if method in CHANGING:
                app = None
        else:
            assert refused, f"{who} must be refused {method} {url} ({rule_text}) but got {status}"


def test_the_matrix_covers_every_route_and_role():
    # The figure for the closing note: routes x roles actually tried above.
    print(f"\n{len(CASES)} route/method pairs x {1 + len(ROLES)} identities = {len(CASES) * (1 + len(ROLES))} checks")
    assert len(CASES) == len(ROUTES)

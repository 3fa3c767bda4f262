"""The client list with 10,000 clients on one interface: every page, search, filter and sort
returns the right rows.  (How fast it is, bench/bench_client_list.py measures.)

The expected rows are worked out here in Python from the seeded rows, independently of
the SQL the list runs.
"""

import re
import time

import pytest

from bench.seed import seed
from puqvpn import create_app
from puqvpn.db import connect
from puqvpn.services import users
from tests.conftest import csrf_token

COUNT = 10_000
ONLINE_TIMEOUT = 180


@pytest.fixture(scope="module")
def scale(tmp_path_factory):
    """A panel with 10,000 seeded clients and a logged-in test client, shared by this module."""
    directory = tmp_path_factory.mktemp("scale")
    app = create_app(INSTANCE_DIR=str(directory / "instance"), SYSTEM_APPLY="0", BACKGROUND_JOBS="0",
                     WG_CONF_DIR=str(directory / "wireguard"), SWANCTL_DIR=str(directory / "swanctl"),
                     BACKUP_DIR=str(directory / "backups"), ONLINE_TIMEOUT=str(ONLINE_TIMEOUT))
    app.config["TESTING"] = True
    db = connect(app.config["PUQVPN"]["DATABASE"])
    now = int(time.time())
    seed(db, COUNT, now=now)
    users.create_user(db, "admin", "correct horse battery", "admin")
    client = app.test_client()
    response = client.post("/auth/login", data={"username": "admin", "password": "correct horse battery",
                                                "csrf_token": csrf_token(client)})
    assert response.status_code == 302
    rows = list(db.query("SELECT * FROM clients"))
    yield {"client": client, "rows": rows, "now": now}
    db.conn.close()


def listed(scale, **params):
    """The table as an active search gets it: (client names in order, total, page line)."""
    response = scale["client"].get("/clients/", query_string=params,
                                   headers={"HX-Request": "true", "HX-Target": "client-table"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    names = re.findall(r'<tr id="client-\d+">\s*<td><a href="/clients/\d+">([^<]+)</a>', html)
    total = int(re.search(r'<small id="client-count">([\d,]+) clients?\b', html).group(1).replace(",", ""))
    pager = re.search(r"Page (\d+) of ([\d,]+)", html)
    return names, total, (pager and (int(pager.group(1)), int(pager.group(2).replace(",", ""))))


def status(row, now):
    if row["suspended_reason"]:
        return {"admin": "suspended"}.get(row["suspended_reason"], row["suspended_reason"])
    if row["last_handshake"] and now - row["last_handshake"] < ONLINE_TIMEOUT:
        return "online"
    return "offline"


def in_order(rows, key, descending=False):
    """Rows ordered as the list orders them: by key (empty values first), then by id."""
    by_id = sorted(rows, key=lambda row: row["id"])
    # Python's sort is stable even when reversed, so ties stay in id order either way.
    return sorted(by_id, key=lambda row: (key(row) is not None, key(row) or 0), reverse=descending)


def names(rows):
    return [row["name"] for row in rows]


def matching(rows, q):
    q = q.lower()
    return [row for row in rows
            if any(q in (row[column] or "").lower() for column in ("name", "ip", "username", "note"))]


def test_the_first_page_shows_fifty_clients_by_name_of_all_ten_thousand(scale):
    shown, total, pager = listed(scale)
    assert total == COUNT
    assert pager == (1, 200)
    assert shown == names(in_order(scale["rows"], lambda row: row["name"]))[:50]
    assert shown[0] == "client-00001"


def test_the_full_page_has_the_layout_and_the_same_table(scale):
    html = scale["client"].get("/clients/").get_data(as_text=True)
    assert "<nav>" in html and 'id="client-search"' in html
    assert html.count('<tr id="client-') == 50
    assert ">10,000 clients</small>" in html and "Page 1 of 200" in html


@pytest.mark.parametrize("q", ["client-0123", "10.8.3.7", "vip", "user0999", "CLIENT-0000", "10.8.39.", "1"])
def test_search_finds_exactly_the_matching_clients(scale, q):
    expected = names(in_order(matching(scale["rows"], q), lambda row: row["name"]))
    assert expected, "a query that matches nothing proves little"
    shown, total, _pager = listed(scale, q=q, per_page=200)
    assert total == len(expected)
    assert shown == expected[:200]


@pytest.mark.parametrize("q", ["%", "_", "client_0", "\\", "nobody-at-all"])
def test_search_treats_like_wildcards_as_plain_characters(scale, q):
    assert matching(scale["rows"], q) == []
    shown, total, _pager = listed(scale, q=q)
    assert (shown, total) == ([], 0)


@pytest.mark.parametrize("wanted", ["active", "online", "offline", "suspended", "expired", "quota"])
def test_the_status_filter_keeps_only_clients_in_that_state(scale, wanted):
    def fits(row):
        state = status(row, scale["now"])
        return state not in ("suspended", "expired", "quota") if wanted == "active" else state == wanted

    expected = names(in_order([row for row in scale["rows"] if fits(row)], lambda row: row["name"]))
    shown, total, _pager = listed(scale, status=wanted, per_page=100)
    assert total == len(expected) > 0
    assert shown == expected[:100]


SORT_KEYS = {
    "name": lambda row: row["name"],
    "ip": lambda row: row["ip_int"],
    "created": lambda row: row["id"],
    "traffic": lambda row: row["rx_bytes"] + row["tx_bytes"],
    "handshake": lambda row: row["last_handshake"],
    "expires": lambda row: row["expires_at"],
}


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("sort", sorted(SORT_KEYS))
def test_every_sort_orders_the_whole_list(scale, sort, order):
    ordered = names(in_order(scale["rows"], SORT_KEYS[sort], order == "desc"))
    first, total, _pager = listed(scale, sort=sort, order=order)
    last, _total, pager = listed(scale, sort=sort, order=order, page=200)
    assert total == COUNT
    assert first == ordered[:50]
    assert last == ordered[-50:]
    assert pager == (200, 200)


def test_pages_follow_each_other_without_gaps_or_repeats(scale):
    ordered = names(in_order(scale["rows"], SORT_KEYS["traffic"], True))
    seen = []
    for page in range(1, 6):
        shown, _total, pager = listed(scale, sort="traffic", order="desc", per_page=200, page=page)
        assert pager == (page, 50)
        seen += shown
    assert seen == ordered[:1000]


def test_filters_search_and_paging_combine(scale):
    suspended = [row for row in matching(scale["rows"], "client-0") if row["suspended_reason"] == "admin"]
    expected = names(in_order(suspended, SORT_KEYS["ip"], True))
    assert len(expected) > 20
    shown, total, pager = listed(scale, q="client-0", status="suspended", sort="ip", order="desc",
                                 per_page=10, page=2)
    assert total == len(expected)
    assert shown == expected[10:20]
    assert pager == (2, -(-len(expected) // 10))


def test_a_page_past_the_end_is_empty_not_an_error(scale):
    shown, total, pager = listed(scale, page=999)
    assert shown == []
    assert total == COUNT
    assert pager == (999, 200)

"""Arbitrary text thrown at every validator and at the IP allocator (hypothesis).

A validator either refuses with FieldError or returns a clean value: one that
passes the same check again unchanged and, if it can reach a config file,
holds nothing that could break out of its line.  The allocator never hands
out a taken, reserved or out-of-pool address, whatever is asked of it.
"""

import datetime
import inspect
import ipaddress
import re
import shutil
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from puqvpn.db import connect
from puqvpn.services import clients, interfaces, validation, wgconfig
from puqvpn.services.validation import FieldError, ValidationError

# Pieces built to break out of a config line, a shell word or an nft rule.
NASTY = ["\n", "\r", "\x00", '"', "'", "\\", ";", "$(", ")", "`", "|", "&", "#", "=", "[Peer]", "{", "}",
         " ", "\t", "\u2028", "\u0131", "\uff57\uff47\uff10", "\u0430", "\u200b", "é", "%", "*", "..",
         "AllowedIPs = 0.0.0.0/0", "include ", "/", ":", ",", "@", "-", "_", "."]


def nasty_text():
    plain = st.text(alphabet=string.ascii_letters + string.digits + ".-_@:/, ", max_size=40)
    pieces = st.lists(st.one_of(st.sampled_from(NASTY), plain), max_size=8).map("".join)
    return st.one_of(st.text(max_size=80), pieces, plain, st.integers().map(str),
                     st.from_regex(r"wg[0-9]{1,6}", fullmatch=True),
                     st.ip_addresses().map(str), st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4),
                                                           st.integers(-1, 40)))


# Every validator taking one value; those whose result can reach a config file are "strict".
STRICT = {"client_name", "username", "password", "interface_name", "device_name", "hostname", "host",
          "ipv4_address", "ipv6_address", "gateway4", "gateway6", "port", "mtu", "keepalive", "mbit",
          "gigabytes", "date", "dns_servers", "cidr_list", "wg_key"}
FREE_TEXT = {"label", "note"}            # shown in the UI only; never written to a config file
OTHER = {"boolean"}
EXTRA_ARGS = {"integer": (0, 100)}


def test_every_validator_is_covered():
    public = {name for name, function in inspect.getmembers(validation, inspect.isfunction)
              if not name.startswith("_") and function.__module__ == validation.__name__}
    assert public == STRICT | FREE_TEXT | OTHER | set(EXTRA_ARGS)


# Printable ASCII without anything that ends a line, quotes, escapes or comments.
SAFE_CONFIG_VALUE = re.compile(r"[A-Za-z0-9!$%&()*+,\-./:;<=>?@\[\]^_{|}~ ]*")


def check_clean(name, value, result):
    if name == "password":
        # It only reaches files base64-encoded and charon over VICI, but must still be one plain word.
        assert re.fullmatch(r"[\x21-\x7e]{8,128}", result) and not set(result) & set("\"'\\`"), result
        assert validation.password(result) == result
    elif name in STRICT:
        text = "" if result is None else str(result)
        assert SAFE_CONFIG_VALUE.fullmatch(text), f"{name}({value!r}) let through {text!r}"
        assert "#" not in text and ";" not in text and "$" not in text
        if name not in ("dns_servers", "cidr_list"):
            assert " " not in text
        again = getattr(validation, name)(text) if text else None
        if result is not None and text:
            assert again == result, f"{name} is not stable: {result!r} -> {again!r}"
    elif name == "label":
        assert not any(ord(c) < 32 or ord(c) == 127 for c in result)
    elif name == "note":
        assert "\x00" not in result and len(result) <= 2000
    elif name == "boolean":
        assert isinstance(result, bool)
    elif name == "integer":
        assert 0 <= result <= 100


@pytest.mark.parametrize("name", sorted(STRICT | FREE_TEXT | OTHER | set(EXTRA_ARGS)))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=nasty_text())
def test_a_validator_refuses_or_returns_a_clean_value(name, value):
    function = getattr(validation, name)
    try:
        result = function(value, *EXTRA_ARGS.get(name, ()))
    except FieldError as error:
        assert str(error), "a refusal says why"
        return
    check_clean(name, value, result)


@pytest.mark.parametrize("name", sorted(STRICT))
@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.booleans()))
def test_a_validator_copes_with_values_that_are_not_text(name, value):
    try:
        result = getattr(validation, name)(value)
    except FieldError:
        return
    check_clean(name, value, result)


# ---------------------------------------------------------------- the allocator

@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="puqvpn-props-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


_counter = iter(range(10 ** 9))


def fresh_db(workdir):
    return connect(workdir / f"db{next(_counter)}.sqlite3")


def pools():
    """A gateway/prefix as an admin might give it, with small pools so they fill up."""
    def build(network_int, prefix, offset):
        network = ipaddress.IPv4Network((network_int << (32 - prefix) & 0xFFFFFFFF, prefix), strict=False)
        host = network.network_address + 1 + offset % (network.num_addresses - 2)
        return f"{host}/{prefix}"
    return st.builds(build, st.integers(0, 2 ** 20), st.integers(26, 30), st.integers(0, 64)).filter(
        lambda text: _valid_gateway(text))


def _valid_gateway(text):
    try:
        validation.gateway4(text)
        return True
    except FieldError:
        return False


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("create"), st.none()),
    st.tuples(st.just("create"), nasty_text()),
    st.tuples(st.just("create_in_pool"), st.integers(-2, 70)),
    st.tuples(st.just("move"), st.tuples(st.integers(0, 40), st.integers(-2, 70))),
    st.tuples(st.just("delete"), st.integers(0, 40)),
), max_size=25)


def assert_allocation_invariants(db, interface):
    gateway = ipaddress.IPv4Interface(interface["address"])
    network = gateway.network
    rows = list(db.query("SELECT ip, ip_int FROM clients WHERE interface_id = ?", [interface["id"]]))
    addresses = [ipaddress.IPv4Address(row["ip"]) for row in rows]
    assert len(set(addresses)) == len(addresses), "an address was handed out twice"
    for row, address in zip(rows, addresses):
        assert int(address) == row["ip_int"]
        assert address in network, f"{address} is outside the pool {network}"
        assert address not in (network.network_address, network.broadcast_address, gateway.ip), \
            f"{address} is reserved"
    for free in clients.free_ips(db, interface, limit=5):
        assert ipaddress.IPv4Address(free) not in addresses


def rows_of(db):
    return [tuple(row) for row in db.execute("SELECT * FROM clients ORDER BY id")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(pool=pools(), operations=OPERATIONS)
def test_the_allocator_never_hands_out_a_taken_reserved_or_outside_address(workdir, pool, operations):
    db = fresh_db(workdir)
    try:
        interface = interfaces.create(db, {"name": "wg0", "address": pool, "listen_port": "51820",
                                           "endpoint": "vpn.example.com", "mtu": "1420", "keepalive": "25",
                                           "allowed_ips": "0.0.0.0/0"})
        network = ipaddress.IPv4Interface(pool).network
        for number, (operation, argument) in enumerate(operations):
            before = rows_of(db)
            ids = [row[0] for row in before]
            try:
                if operation == "create":
                    data = {"interface": "wg0", "name": f"c{number}"}
                    if argument is not None:
                        data["ip"] = argument
                    clients.create(db, data)
                elif operation == "create_in_pool":
                    address = network.network_address + argument
                    clients.create(db, {"interface": "wg0", "name": f"c{number}", "ip": str(address)})
                elif operation == "move" and ids:
                    client_id = ids[argument[0] % len(ids)]
                    clients.update(db, client_id, {"ip": str(network.network_address + argument[1])})
                elif operation == "delete" and ids:
                    clients.delete(db, ids[argument % len(ids)])
            except (ValidationError, ipaddress.AddressValueError):
                # Refused: nothing changed.
                assert rows_of(db) == before
            assert_allocation_invariants(db, interface)
    finally:
        db.conn.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.integers(27, 30))
def test_a_pool_fills_up_exactly_and_then_says_so(workdir, prefix):
    db = fresh_db(workdir)
    try:
        interface = interfaces.create(db, {"name": "wg0", "address": f"10.9.0.1/{prefix}", "listen_port": "51820",
                                           "endpoint": "vpn.example.com", "mtu": "1420", "keepalive": "25",
                                           "allowed_ips": "0.0.0.0/0"})
        usable = 2 ** (32 - prefix) - 3           # minus network, broadcast and the gateway
        for number in range(usable):
            clients.create(db, {"interface": "wg0", "name": f"c{number}"})
        with pytest.raises(ValidationError) as full:
            clients.create(db, {"interface": "wg0", "name": "one-too-many"})
        assert "full" in full.value.fields["ip"]
        assert_allocation_invariants(db, interface)
    finally:
        db.conn.close()


# ---------------------------------------------------------------- nothing invalid gets stored or rendered

CLIENT_FIELDS = ("name", "ip", "username", "password", "down_mbit", "up_mbit", "expires_at", "quota_gb",
                 "quota_reset_day", "note")
# A section, a "# name" comment (the panel's own header may follow the name), or "Key = value".
CONFIG_LINE = re.compile(r"(|\[Interface\]|\[Peer\]|# [A-Za-z0-9_.@-]+(: managed by puqvpn, edits here are overwritten)?"
                         r"|[A-Za-z]+ = [A-Za-z0-9+/=.,:/ ]+)")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.fixed_dictionaries({}, optional={field: nasty_text() for field in CLIENT_FIELDS}))
def test_arbitrary_client_fields_are_stored_clean_or_refused(workdir, data):
    db = fresh_db(workdir)
    try:
        interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                               "endpoint": "vpn.example.com", "mtu": "1420", "keepalive": "25",
                               "allowed_ips": "0.0.0.0/0"})
        try:
            client = clients.create(db, {"interface": "wg0", **data})
        except ValidationError as error:
            assert error.fields and all(error.fields.values())
            assert rows_of(db) == []
            return
        # Whatever was stored passes every check again.
        assert validation.client_name(client["name"]) == client["name"]
        assert validation.username(client["username"]) == client["username"]
        assert validation.password(client["password"]) == client["password"]
        assert validation.ipv4_address(client["ip"])
        if client["expires_at"]:
            assert datetime.date.fromisoformat(client["expires_at"])
        interface = interfaces.get(db, "wg0")
        for text in (wgconfig.render_server_config(interface, [client]), wgconfig.render_setconf(interface, [client]),
                     wgconfig.render_client_config(interface, client)):
            for line in text.splitlines():
                assert CONFIG_LINE.fullmatch(line), f"unexpected config line {line!r}"
    finally:
        db.conn.close()

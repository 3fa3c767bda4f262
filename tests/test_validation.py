"""Every field rule, including what must never reach a config file."""

import pytest

from puqvpn.services import clients, interfaces, validation
from puqvpn.services.validation import FieldError, ValidationError

INJECTIONS = [
    "alice\n[Peer]",
    "alice\r\nPublicKey = x",
    "alice = 1",
    "al\x00ice",
    "alice; rm -rf /",
    "$(reboot)",
    "`id`",
    'alice"',
    "alice'",
    "аlice",            # Cyrillic a
    "a" * 64,
    " ",
    "",
    "-leading-dash",
    "{brace}",
    "alice bob",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_client_names_that_could_break_a_config_are_refused(value):
    with pytest.raises(FieldError):
        validation.client_name(value)


@pytest.mark.parametrize("value", ["alice", "bob.smith", "c-3po", "user@example.com", "A_1"])
def test_ordinary_client_names_pass(value):
    assert validation.client_name(value) == value


@pytest.mark.parametrize("value", ["10.8.0.1/33", "10.8.0.0/24", "10.8.0.255/24", "10.8.0.1", "300.1.1.1/24",
                                   "10.8.0.1/31", "127.0.0.1/8", "224.0.0.1/24", "fd00::1/64", "x"])
def test_bad_gateway_addresses_are_refused(value):
    with pytest.raises(FieldError):
        validation.gateway4(value)


def test_a_gateway_keeps_its_prefix():
    assert validation.gateway4(" 10.8.0.1/24 ") == "10.8.0.1/24"


@pytest.mark.parametrize("value", ["0", "65536", "22", "53", "500", "4500", "-1", "51820x", ""])
def test_bad_and_reserved_ports_are_refused(value):
    with pytest.raises(FieldError):
        validation.port(value)


@pytest.mark.parametrize("value", ["1279", "1501", "abc", "1420.5"])
def test_mtu_out_of_range_is_refused(value):
    with pytest.raises(FieldError):
        validation.mtu(value)


@pytest.mark.parametrize("value", ["vpn.example.com", "203.0.113.7", "2001:db8::1", "VPN.Example.COM."])
def test_endpoint_hosts(value):
    assert validation.host(value)


@pytest.mark.parametrize("value", ["vpn example.com", "vpn.example.com\n", "-bad.com", "a..b", "1.2.3.4.5", "x" * 300])
def test_bad_endpoint_hosts_are_refused(value):
    with pytest.raises(FieldError):
        validation.host(value)


def test_dns_allows_two_of_each_family():
    assert validation.dns_servers("1.1.1.1, 9.9.9.9 2606:4700::1111") == "1.1.1.1, 9.9.9.9, 2606:4700::1111"
    with pytest.raises(FieldError):
        validation.dns_servers("1.1.1.1, 8.8.8.8, 9.9.9.9")
    with pytest.raises(FieldError):
        validation.dns_servers("1.1.1.1\nPostUp = id")


def test_allowed_ips_are_normalised_networks():
    assert validation.cidr_list("0.0.0.0/0,::/0") == "0.0.0.0/0, ::/0"
    assert validation.cidr_list("10.0.0.5/8") == "10.0.0.0/8"
    with pytest.raises(FieldError):
        validation.cidr_list("0.0.0.0/0\n[Peer]")


@pytest.mark.parametrize("value", ["short", "has space in it", 'quote"inside', "back\\slash1", "naïve-password",
                                   "x" * 129, "new\nline1234"])
def test_ikev2_passwords_that_could_break_swanctl_are_refused(value):
    with pytest.raises(FieldError):
        validation.password(value)


def test_overlapping_pools_are_refused(db, wg0):
    with pytest.raises(ValidationError) as error:
        interfaces.create(db, {"name": "wg1", "address": "10.8.0.129/25", "listen_port": "51821",
                               "endpoint": "vpn.example.com"})
    assert "overlaps the pool of wg0" in error.value.fields["address"]


def test_two_interfaces_cannot_share_a_port_or_a_name(db, wg0):
    with pytest.raises(ValidationError) as error:
        interfaces.create(db, {"name": "wg0", "address": "10.9.0.1/24", "listen_port": "51820",
                               "endpoint": "vpn.example.com"})
    assert set(error.value.fields) == {"name", "listen_port"}


def test_a_refused_edit_changes_nothing(db, wg0):
    with pytest.raises(ValidationError):
        interfaces.update(db, wg0["id"], {"mtu": "9000", "label": "new label"})
    assert interfaces.get(db, wg0["id"]) == wg0


def test_a_pool_cannot_shrink_below_its_clients(db, wg0, make_client):
    make_client("alice", ip="10.8.0.200")
    with pytest.raises(ValidationError) as error:
        interfaces.update(db, wg0["id"], {"address": "10.8.0.1/25"})
    assert "alice" in error.value.fields["address"]


def test_a_client_with_an_injected_name_never_reaches_the_database(db, wg0):
    with pytest.raises(ValidationError) as error:
        clients.create(db, {"interface": wg0["id"], "name": "x\n[Peer]\nPublicKey = evil"})
    assert "name" in error.value.fields
    assert db.execute("SELECT count(*) FROM clients").fetchone()[0] == 0


def test_expiry_dates_must_be_real_dates():
    assert validation.date("2027-02-28") == "2027-02-28"
    for bad in ("2027-02-30", "28.02.2027", "2027-2-1"):
        with pytest.raises(FieldError):
            validation.date(bad)


def test_a_client_cannot_take_a_name_the_api_uses_as_a_path():
    with pytest.raises(FieldError, match="reserved"):
        validation.client_name("online")

"""Every field check in one place.

Each check takes the raw value (usually a string from a form or JSON) and
returns the clean value, or raises ``FieldError`` with a message meant for
the person who typed it.  ``ValidationError`` gathers them per field.

Anything that can reach a config file (wg, swanctl, nft) is held to a strict
ASCII pattern, so newlines, quotes, ``=``, ``[Peer]`` tricks, NUL bytes and
Unicode look-alikes are refused before they get near a file.
"""

import datetime
import ipaddress
import re


class FieldError(ValueError):
    pass


class ValidationError(ValueError):
    """One or more fields are invalid; ``fields`` maps field name to message."""

    def __init__(self, fields):
        self.fields = dict(fields)
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.fields.items()))


class Checker:
    """Collects field errors: ``value = check.field("port", port, raw)``."""

    def __init__(self):
        self.errors = {}

    def field(self, name, function, value, *args, **kwargs):
        try:
            return function(value, *args, **kwargs)
        except FieldError as error:
            self.errors.setdefault(name, str(error))
            return None

    def error(self, name, message):
        self.errors.setdefault(name, message)

    def done(self):
        if self.errors:
            raise ValidationError(self.errors)


CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
INTERFACE_NAME = re.compile(r"wg[0-9]{1,5}")
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PASSWORD_CHARS = re.compile(r"[A-Za-z0-9!#$%&()*+,\-./:;<=>?@\[\]^_{|}~]+")

# Ports a VPN interface must not take: SSH, DNS, HTTP(S), IKE and NAT-T, etc.
RESERVED_PORTS = {22, 25, 53, 67, 68, 80, 123, 443, 500, 4500, 8443}


def _text(value, multiline=False):
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    if "\x00" in value:
        raise FieldError("must not contain a NUL byte")
    if not multiline and ("\n" in value or "\r" in value):
        raise FieldError("must be a single line")
    return value.strip(" \t")


def _pattern(value, pattern, what, allowed):
    value = _text(value)
    if not value:
        raise FieldError(f"{what} is required")
    if not pattern.fullmatch(value):
        raise FieldError(f"{what} may only contain {allowed}")
    return value


# Names that are API paths under /api/v1/clients/.
RESERVED_CLIENT_NAMES = {"online"}


def client_name(value):
    value = _text(value)
    if len(value) > 63:
        raise FieldError("use at most 63 characters")
    value = _pattern(value, CLIENT_NAME, "a name",
                     "letters, digits and . _ - @, starting with a letter or digit")
    if value.lower() in RESERVED_CLIENT_NAMES:
        raise FieldError(f"{value!r} is reserved; choose another name")
    return value


def username(value):
    value = _text(value)
    if len(value) > 64:
        raise FieldError("use at most 64 characters")
    return _pattern(value, USERNAME, "a username",
                    "letters, digits and . _ - @, starting with a letter or digit")


def password(value):
    value = _text(value)
    if len(value) < 8:
        raise FieldError("use at least 8 characters")
    if len(value) > 128:
        raise FieldError("use at most 128 characters")
    if not PASSWORD_CHARS.fullmatch(value):
        raise FieldError("use printable ASCII without spaces, quotes or backslashes")
    return value


def interface_name(value):
    return _pattern(value, INTERFACE_NAME, "an interface name", "the form wgN, e.g. wg0")


def device_name(value, required=False):
    value = _text(value)
    if not value and not required:
        return ""
    if len(value) > 15:
        raise FieldError("a network device name has at most 15 characters")
    return _pattern(value, DEVICE_NAME, "a device name", "letters, digits and . _ -")


def label(value, max_length=64):
    value = _text(value)
    if len(value) > max_length:
        raise FieldError(f"use at most {max_length} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FieldError("must be one line of text")
    return value


def note(value):
    value = _text(value, multiline=True).strip()
    if len(value) > 2000:
        raise FieldError("use at most 2000 characters")
    return value


def hostname(value):
    value = _text(value).rstrip(".")
    if not value:
        raise FieldError("a host name is required")
    if len(value) > 253:
        raise FieldError("a host name has at most 253 characters")
    labels = value.split(".")
    if not all(HOSTNAME_LABEL.fullmatch(part) for part in labels) or labels[-1].isdigit():
        raise FieldError("not a valid host name (letters, digits, dots and hyphens)")
    return value.lower()


def host(value):
    """A domain name or an IP address, as clients dial it."""
    value = _text(value)
    if not value:
        raise FieldError("the endpoint host is required")
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    try:
        return hostname(value)
    except FieldError:
        raise FieldError("enter a domain name or an IP address") from None


def ipv4_address(value):
    value = _text(value)
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise FieldError("not a valid IPv4 address") from None


def ipv6_address(value):
    value = _text(value)
    try:
        return ipaddress.IPv6Address(value)
    except ValueError:
        raise FieldError("not a valid IPv6 address") from None


def gateway4(value):
    """The interface's gateway address with the pool's prefix: 10.8.0.1/24."""
    value = _text(value)
    if "/" not in value:
        raise FieldError("give the gateway address with its prefix, e.g. 10.8.0.1/24")
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        raise FieldError("not a valid IPv4 address/prefix, e.g. 10.8.0.1/24") from None
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        raise FieldError("the prefix must be between /8 and /30")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise FieldError("the gateway cannot be the network or broadcast address")
    if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified or iface.ip.is_link_local:
        raise FieldError("use a unicast address (private ranges such as 10.8.0.1/24 are usual)")
    return str(iface)


def gateway6(value):
    value = _text(value)
    if not value:
        return None
    if "/" not in value:
        raise FieldError("give the gateway address with its prefix, e.g. fd42:42::1/64")
    try:
        iface = ipaddress.IPv6Interface(value)
    except ValueError:
        raise FieldError("not a valid IPv6 address/prefix, e.g. fd42:42::1/64") from None
    if not 48 <= iface.network.prefixlen <= 124:
        raise FieldError("the prefix must be between /48 and /124")
    if iface.ip == iface.network.network_address:
        raise FieldError("the gateway cannot be the subnet-router (all-zero) address")
    if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_link_local:
        raise FieldError("use a unicast address (ULA such as fd42:42::1/64 is usual)")
    return str(iface)


def port(value, reserved=RESERVED_PORTS):
    value = _text(value)
    if not value.isdigit():
        raise FieldError("a port is a whole number from 1 to 65535")
    number = int(value)
    if not 1 <= number <= 65535:
        raise FieldError("a port is a whole number from 1 to 65535")
    if number in reserved:
        raise FieldError(f"port {number} is reserved for another service")
    return number


def integer(value, low, high, what="the value"):
    value = _text(value)
    if not re.fullmatch(r"-?[0-9]+", value or "x"):
        raise FieldError(f"{what} must be a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise FieldError(f"{what} must be from {low} to {high}")
    return number


def mtu(value):
    return integer(value, 1280, 1500, "the MTU")


def keepalive(value):
    return integer(value, 0, 3600, "the keepalive (seconds, 0 = off)")


def mbit(value):
    """A rate in Mbit/s; 0 means unlimited (or 'use the default')."""
    value = _text(value) or "0"
    try:
        number = float(value)
    except ValueError:
        raise FieldError("enter a number of Mbit/s (0 = unlimited)") from None
    if not 0 <= number <= 100000 or number != number:
        raise FieldError("the rate must be from 0 to 100000 Mbit/s")
    if number and number < 0.064:
        raise FieldError("the smallest limit is 0.064 Mbit/s (64 kbit/s)")
    return round(number, 3)


def gigabytes(value):
    value = _text(value) or "0"
    try:
        number = float(value)
    except ValueError:
        raise FieldError("enter a number of GB (0 = no quota)") from None
    if not 0 <= number <= 1_000_000 or number != number:
        raise FieldError("the quota must be from 0 to 1000000 GB")
    return round(number, 3)


def date(value, allow_past=True):
    value = _text(value)
    if not value:
        return None
    if not DATE.fullmatch(value):
        raise FieldError("use the form YYYY-MM-DD")
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise FieldError("not a real date") from None
    if not allow_past and day < datetime.datetime.now(datetime.timezone.utc).date():
        raise FieldError("the date is in the past")
    return day.isoformat()


def dns_servers(value):
    """Up to two IPv4 and two IPv6 resolvers, comma or space separated."""
    items = [item for item in re.split(r"[,\s]+", _text(value)) if item]
    v4, v6 = [], []
    for item in items:
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise FieldError(f"{item[:40]!r} is not an IP address") from None
        (v4 if address.version == 4 else v6).append(str(address))
    if len(v4) > 2 or len(v6) > 2:
        raise FieldError("at most two IPv4 and two IPv6 servers")
    return ", ".join(v4 + v6)


def cidr_list(value, required=True):
    """AllowedIPs: comma-separated networks such as 0.0.0.0/0, ::/0."""
    items = [item for item in re.split(r"[,\s]+", _text(value)) if item]
    if not items and required:
        raise FieldError("at least one network is required, e.g. 0.0.0.0/0, ::/0")
    if len(items) > 64:
        raise FieldError("at most 64 networks")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise FieldError(f"{item[:40]!r} is not a network such as 10.0.0.0/8") from None
    return ", ".join(networks)


def boolean(value):
    if isinstance(value, bool):
        return value
    return _text(value).lower() in ("1", "true", "on", "yes")


def wg_key(value, required=True):
    from .keys import decode_key
    value = _text(value)
    if not value and not required:
        return None
    try:
        decode_key(value)
    except ValueError as error:
        raise FieldError(str(error)) from None
    return value

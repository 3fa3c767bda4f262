"""Rendering WireGuard configs from database rows.

Three texts: the server's wg-quick file (``/etc/wireguard/wgN.conf``), the
``wg setconf`` text the live interface is synced from, and a client's
``.conf`` as the official apps import it.  Only active clients become peers.
"""

import ipaddress


def _line(key, value):
    value = str(value)
    # Every value is validated before it is stored; this is the last guard.
    if any(c in value for c in "\r\n\x00") or value != value.strip():
        raise ValueError(f"refusing to write {key}: value would break the config line")
    return f"{key} = {value}"


def is_active(client):
    return client.get("suspended_reason") is None


def client_addresses(client, prefix=True):
    """The client's tunnel addresses: ['10.8.0.2/32', 'fd42::2/128']."""
    addresses = [f"{client['ip']}/32" if prefix else client["ip"]]
    if client.get("ip6"):
        addresses.append(f"{client['ip6']}/128" if prefix else client["ip6"])
    return addresses


def interface_addresses(interface):
    return [a for a in (interface["address"], interface.get("address6")) if a]


def endpoint(interface):
    host = interface["endpoint"]
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{host}:{interface['listen_port']}"


def _peer_lines(client):
    lines = ["", "[Peer]", f"# {client['name']}", _line("PublicKey", client["public_key"])]
    if client.get("preshared_key"):
        lines.append(_line("PresharedKey", client["preshared_key"]))
    lines.append(_line("AllowedIPs", ", ".join(client_addresses(client))))
    return lines


def render_server_config(interface, clients):
    """The wg-quick file for the interface; the panel manages routing and NAT itself."""
    lines = [
        f"# {interface['name']}: managed by puqvpn, edits here are overwritten",
        "[Interface]",
        _line("Address", ", ".join(interface_addresses(interface))),
        _line("ListenPort", interface["listen_port"]),
        _line("PrivateKey", interface["private_key"]),
        _line("MTU", interface["mtu"]),
    ]
    for client in clients:
        if is_active(client):
            lines += _peer_lines(client)
    return "\n".join(lines) + "\n"


def render_setconf(interface, clients):
    """What ``wg setconf``/``wg syncconf`` read: keys, port and peers only."""
    lines = [
        "[Interface]",
        _line("PrivateKey", interface["private_key"]),
        _line("ListenPort", interface["listen_port"]),
    ]
    for client in clients:
        if is_active(client):
            lines += _peer_lines(client)
    return "\n".join(lines) + "\n"


def render_client_config(interface, client, dns=None):
    """The client's wg-quick .conf, as the WireGuard apps import it (file or QR).

    ``dns`` overrides the interface's DNS servers (the panel's own resolver).
    """
    if not client.get("private_key"):
        raise ValueError("this client was imported without its private key; its profile cannot be rebuilt")
    lines = [
        "[Interface]",
        _line("PrivateKey", client["private_key"]),
        _line("Address", ", ".join(client_addresses(client))),
    ]
    dns = interface.get("dns") if dns is None else dns
    if dns:
        lines.append(_line("DNS", dns))
    lines.append(_line("MTU", interface["mtu"]))
    lines += [
        "",
        "[Peer]",
        _line("PublicKey", interface["public_key"]),
    ]
    if client.get("preshared_key"):
        lines.append(_line("PresharedKey", client["preshared_key"]))
    lines.append(_line("AllowedIPs", interface["allowed_ips"]))
    lines.append(_line("Endpoint", endpoint(interface)))
    if int(interface.get("keepalive") or 0):
        lines.append(_line("PersistentKeepalive", interface["keepalive"]))
    return "\n".join(lines) + "\n"


def client_config_filename(interface, client):
    # The apps use the file name as the tunnel name: at most 15 safe characters.
    base = "".join(c if c.isalnum() or c in "_=+.-" else "-" for c in client["name"])[:15]
    return f"{base or interface['name']}.conf"

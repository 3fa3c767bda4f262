"""What the system really runs for one interface, and quick checks of the usual faults.

The checks target "the handshake works but there is no internet": forwarding
off, the NAT rule missing, NAT going out of the wrong device, an MTU that
cannot fit through the uplink, and another firewall dropping forwarded
traffic.  Every check says ok, warn or fail with a sentence an admin can act
on; a command that fails becomes a failed check, never an exception.
"""

import ipaddress
import json

from . import firewall, wgconfig, wireguard
from .system import CommandError

# WireGuard's overhead on the wire: outer IPv6 40 + UDP 8 + WireGuard 32.
WG_OVERHEAD = 80


def check(name, state, detail):
    return {"name": name, "state": state, "detail": detail}


def _try(function, *args):
    try:
        return function(*args), None
    except (CommandError, wireguard.WireGuardError, firewall.FirewallError, ValueError, OSError) as error:
        return None, str(error)


def raw_outputs(ctx, interface):
    """The interface as the system shows it: [(title, text)] (wg show hides the private key)."""
    name = wireguard.check_name(interface["name"])
    ip, wg = ctx.settings.get("IP_BIN", "ip"), ctx.settings.get("WG_BIN", "wg")
    outputs = []
    for title, argv in ((f"wg show {name}", [wg, "show", name]),
                        (f"ip -d address show dev {name}", [ip, "-d", "address", "show", "dev", name]),
                        ("ip route", [ip, "route"]),
                        ("ip -6 route", [ip, "-6", "route"])):
        try:
            result = ctx.runner.run(argv, check=False)
            outputs.append((title, (result.stdout + result.stderr).strip() or "(no output)"))
        except CommandError as error:
            outputs.append((title, str(error)))
    table = firewall.table_name(ctx)
    listing, error = _try(firewall.list_table, ctx)
    outputs.append((f"nft list table inet {table}", error or listing or f"table inet {table} is not loaded"))
    return outputs


def checks(ctx, interface):
    """Quick checks for one interface: a list of {name, state, detail}."""
    name = interface["name"]
    found = []
    if not interface["enabled"]:
        return [check("Interface", "warn", f"{name} is disabled: it is down and its clients are offline.")]

    link, error = _try(wireguard.link, ctx, name)
    if error or link is None:
        found.append(check("Interface", "fail", error or f"{name} does not exist on the system: press Apply."))
        return found
    up = "UP" in (link.get("flags") or [])
    backend, _ = _try(wireguard.backend, ctx)
    found.append(check("Interface", "ok" if up else "fail",
                       f"{name} is {'up' if up else 'down'} ({backend or 'unknown'} WireGuard)."))

    dump, error = _try(wireguard.show_dump, ctx, name)
    if error:
        found.append(check("WireGuard", "fail", error))
    else:
        live_iface, peers = dump
        active = [c for c in _clients(ctx, interface) if wgconfig.is_active(c)]
        port_ok = live_iface["listen_port"] == int(interface["listen_port"])
        found.append(check("Listen port", "ok" if port_ok else "fail",
                           f"listening on UDP {live_iface['listen_port']}" +
                           ("" if port_ok else f", but the panel wants {interface['listen_port']}: press Apply.")))
        in_sync = set(peers) == {c["public_key"] for c in active}
        found.append(check("Peers", "ok" if in_sync else "warn",
                           f"{len(peers)} peers live, {len(active)} active clients in the panel" +
                           ("." if in_sync else ": press Apply to sync them.")))

    found += forwarding_checks(ctx, interface)
    found += nat_checks(ctx, interface)
    found += mtu_checks(ctx, interface)
    found += foreign_firewall_checks(ctx)
    return found


def forwarding_checks(ctx, interface):
    found = []
    keys = [("IPv4 forwarding", "net.ipv4.ip_forward")]
    if interface.get("address6"):
        keys.append(("IPv6 forwarding", "net.ipv6.conf.all.forwarding"))
    for title, key in keys:
        value, error = _try(wireguard.read_sysctl, ctx, key)
        if error:
            found.append(check(title, "fail", error))
        elif value == "1":
            found.append(check(title, "ok", f"{key} = 1"))
        else:
            found.append(check(title, "fail", f"{key} = {value}: clients reach the server but nothing beyond "
                                              "it. Press Apply to turn it on."))
    return found


def nat_checks(ctx, interface):
    name = interface["name"]
    found = []
    default4, error = _try(firewall.default_route_device, ctx, 4)
    ext = interface.get("ext_device") or default4
    if not ext:
        found.append(check("External device", "warn", "no default route and no external device set: "
                                                      "traffic to the internet has nowhere to go."))
    else:
        device, error = _try(wireguard.link, ctx, ext)
        if error or device is None:
            found.append(check("External device", "fail", error or f"{ext} does not exist on this server."))
        elif interface.get("ext_device") and default4 and ext != default4:
            found.append(check("External device", "warn",
                               f"NAT goes out of {ext}, but the default route is via {default4}: internet "
                               f"traffic leaves by {default4} unmasqueraded. Clear the external device to "
                               "follow the default route."))
        else:
            found.append(check("External device", "ok", f"{ext}" + (" (the default route)" if ext == default4 else "")))

    table = firewall.table_name(ctx)
    listing, error = _try(firewall.list_table, ctx)
    if error:
        found.append(check("Firewall", "fail", error))
        return found
    if listing is None:
        found.append(check("Firewall", "fail", f"table inet {table} is not loaded: press Apply."))
        return found
    state, error = _try(firewall.load_state, ctx)
    digest = firewall.rules_hash(firewall.render_rules(ctx, state)) if state else None
    live, _ = _try(firewall.live_hash, ctx)
    found.append(check("Firewall", "ok" if digest and live == digest else "warn",
                       f"table inet {table} is loaded" + ("" if digest and live == digest
                                                          else " but differs from the panel's rules: press Apply.")))
    if interface["nat"]:
        pool = str(ipaddress.ip_interface(interface["address"]).network)
        has_nat = any(f"ip saddr {pool}" in line and "masquerade" in line for line in listing.splitlines())
        found.append(check("NAT", "ok" if has_nat else "fail",
                           f"{pool} is masqueraded" if has_nat else
                           f"no masquerade rule for {pool}: clients cannot reach the internet. Press Apply."))
    else:
        found.append(check("NAT", "ok", f"off for {name}: the pool must be routed to this server upstream."))
    return found


def mtu_checks(ctx, interface):
    ext = interface.get("ext_device") or _try(firewall.default_route_device, ctx, 4)[0]
    if not ext:
        return []
    device, error = _try(wireguard.link, ctx, ext)
    if error or not device or not device.get("mtu"):
        return []
    fits = int(device["mtu"]) - WG_OVERHEAD
    mtu = int(interface["mtu"])
    if mtu > fits:
        return [check("MTU", "warn", f"{interface['name']} MTU {mtu} does not fit through {ext} (MTU "
                                     f"{device['mtu']}) with WireGuard's {WG_OVERHEAD} bytes: large packets "
                                     f"fragment or vanish. Use {fits} or less.")]
    return [check("MTU", "ok", f"{mtu} fits through {ext} (MTU {device['mtu']}).")]


def foreign_firewall_checks(ctx):
    """Another table's forward chain with policy drop also sees VPN traffic, whatever our table says."""
    nft = ctx.settings.get("NFT_BIN", "nft")
    try:
        result = ctx.runner.run([nft, "-j", "list", "chains"])
        items = json.loads(result.stdout or "{}").get("nftables", [])
    except (CommandError, ValueError) as error:
        return [check("Other firewalls", "warn", f"could not list nftables chains: {error}")]
    ours = firewall.table_name(ctx)
    dropping = [f"{c['family']} {c['table']} {c['name']}" for c in (i.get("chain") for i in items) if c
                and c.get("hook") == "forward" and c.get("policy") == "drop"
                and not (c.get("family") == "inet" and c.get("table") == ours)]
    if dropping:
        return [check("Other firewalls", "warn", "forwarded traffic is dropped by default in "
                                                 + ", ".join(dropping) + ": VPN traffic must be accepted "
                                                 "there too (e.g. ufw route allow, or Docker's DOCKER-USER).")]
    return [check("Other firewalls", "ok", "no other forward chain drops by default.")]


def _clients(ctx, interface):
    return list(ctx.db.query("SELECT * FROM clients WHERE interface_id = ?", [interface["id"]]))

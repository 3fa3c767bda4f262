"""The panel's own nftables table (``inet puqvpn`` by default).

Everything the panel needs lives in this one table, rendered whole from the
database and loaded in one ``nft -f`` transaction (create-if-missing, delete,
add), so the system sees the old table or the new one and nobody else's
rules are ever touched.  Per enabled interface:

* masquerade of its pool (IPv4, and IPv6 if it has a prefix) out of its
  external device, unless NAT is off ("public IPs": the pool is routed);
* forwarding from the interface, replies back to it, and either
  client-to-client traffic (within the pool, whatever the device) or a drop
  for it;
* with NAT on, no new connections into the pool from elsewhere except
  port forwards (DNAT of an external port to a client's address and port).

Suspended clients' addresses sit in two named sets whose members are dropped
in forward and input; one client's suspend or resume adds or deletes its
elements only.  The table carries a hash of its rules in its comment, so a
client change or a reconcile can tell in one cheap ``nft -t list`` whether
the rules are in place (after a reboot they are not) and reload only then.
"""

import hashlib
import ipaddress
import json
import re

from .system import CommandError

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,14}")
HASH_PREFIX = "puqvpn rules "
SETS = {4: "suspended4", 6: "suspended6"}


class FirewallError(ValueError):
    """Something that would reach the ruleset is not valid; the message names it."""


# ------------------------------------------------------------------ names and values

def table_name(ctx):
    name = str(ctx.settings.get("NFT_TABLE", "puqvpn"))
    if not TABLE_NAME.fullmatch(name):
        raise FirewallError(f"NFT_TABLE {name!r} is not a valid nftables table name")
    return name


def _device(value, what):
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        raise FirewallError(f"{what}: {value!r} is not a valid network device name")
    return value


def _network(value, version, what):
    try:
        network = ipaddress.ip_interface(value).network
    except (TypeError, ValueError):
        raise FirewallError(f"{what}: {value!r} is not an address with a prefix") from None
    if network.version != version:
        raise FirewallError(f"{what}: {value!r} is not IPv{version}")
    return str(network)


def _address(value, version, what):
    try:
        address = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise FirewallError(f"{what}: {value!r} is not an IP address") from None
    if address.version != version:
        raise FirewallError(f"{what}: {value!r} is not IPv{version}")
    return str(address)


def _port(value, what):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FirewallError(f"{what}: {value!r} is not a port") from None
    if not 1 <= number <= 65535 or str(number) != str(value).strip():
        raise FirewallError(f"{what}: {value!r} is not a port from 1 to 65535")
    return number


def _proto(value, what):
    if value not in ("tcp", "udp"):
        raise FirewallError(f"{what}: protocol must be tcp or udp, not {value!r}")
    return value


# ------------------------------------------------------------------ system facts

def default_route_device(ctx, family=4):
    """The device of the default route (lowest metric), or None if there is none."""
    ip = ctx.settings.get("IP_BIN", "ip")
    result = ctx.runner.run([ip, "-j", f"-{family}", "route", "show", "default"])
    try:
        routes = json.loads(result.stdout or "[]")
    except ValueError:
        return None
    routes = [r for r in routes if isinstance(r, dict) and r.get("dev") and DEVICE.fullmatch(str(r["dev"]))]
    routes.sort(key=lambda r: r.get("metric", 0))
    return routes[0]["dev"] if routes else None


def external_device(ctx, interface, family=4, cache=None):
    """The interface's ext_device, or the default route's device; None if neither is known."""
    if interface.get("ext_device"):
        return _device(interface["ext_device"], f"{interface['name']} external device")
    if cache is not None and family in cache:
        return cache[family]
    device = default_route_device(ctx, family)
    if cache is not None:
        cache[family] = device
    return device


# ------------------------------------------------------------------ the desired state

def load_state(ctx, elements=True):
    """What the ruleset is rendered from: enabled interfaces, port forwards, suspended addresses.

    ``elements=False`` leaves the suspended addresses out: enough for the rules
    and their hash, and much cheaper with thousands of suspended clients.
    """
    db = ctx.db
    interfaces = list(db.query("SELECT * FROM interfaces WHERE enabled = 1 ORDER BY name"))
    forwards = list(db.query("""
        SELECT f.*, c.ip AS client_ip, c.name AS client_name, i.name AS interface_name
        FROM port_forwards f JOIN clients c ON c.id = f.client_id JOIN interfaces i ON i.id = f.interface_id
        WHERE i.enabled = 1 ORDER BY f.proto, f.ext_port"""))
    suspended = {4: set(), 6: set()}
    rows = db.query("SELECT name, ip, ip6 FROM clients WHERE suspended_reason IS NOT NULL") if elements else ()
    for row in rows:
        suspended[4].add(_address(row["ip"], 4, f"client {row['name']}"))
        if row["ip6"]:
            suspended[6].add(_address(row["ip6"], 6, f"client {row['name']}"))
    return {"interfaces": interfaces, "forwards": forwards, "suspended": suspended}


def _q(text):
    # Only validated names and numbers reach here; quoting keeps nft from reading them as keywords.
    if not re.fullmatch(r"[A-Za-z0-9_.=+/:, -]*", text):
        raise FirewallError(f"refusing to put {text!r} in the ruleset")
    return f'"{text}"'


def render_rules(ctx, state):
    """The table's chains and set declarations, without set elements or the hash comment."""
    table = table_name(ctx)
    routes = {}
    pre, post, fwd_c2c, fwd_back, fwd_drop, fwd_out = [], [], [], [], [], []
    for interface in state["interfaces"]:
        name = interface["name"]
        wg = _device(name, "interface name")
        pools = [(4, _network(interface["address"], 4, f"{name} address"))]
        if interface.get("address6"):
            pools.append((6, _network(interface["address6"], 6, f"{name} IPv6 address")))
        verdict = "accept" if interface["client_to_client"] else "drop"
        # By pool, not by device: an IKEv2 client has its address from the same
        # pool but arrives on another device, and the setting covers it too.
        for family, pool in pools:
            ipx = "ip" if family == 4 else "ip6"
            fwd_c2c.append(f"{ipx} saddr {pool} {ipx} daddr {pool} counter {verdict}"
                           f" comment {_q(f'{name} client-to-client IPv{family}')}")
        fwd_back.append(f'oifname {_q(wg)} ct state established,related counter accept comment {_q(name + " replies")}')
        fwd_out.append(f'iifname {_q(wg)} counter accept comment {_q(name + " out")}')
        if interface["nat"]:
            fwd_drop.append(f'oifname {_q(wg)} counter drop comment {_q(name + " no new connections into the NAT pool")}')
            for family, pool in pools:
                device = external_device(ctx, interface, family, routes)
                match = f"oifname {_q(device)}" if device else f"oifname != {_q(wg)}"
                ipx = "ip" if family == 4 else "ip6"
                post.append(f'{match} {ipx} saddr {pool} counter masquerade comment {_q(f"{name} NAT IPv{family}")}')
    for forward in state["forwards"]:
        what = f"port forward {forward.get('proto')}/{forward.get('ext_port')}"
        proto = _proto(forward["proto"], what)
        ext_port = _port(forward["ext_port"], what)
        dest_port = _port(forward["dest_port"], what)
        client_ip = _address(forward["client_ip"], 4, what)
        wg = _device(forward["interface_name"], what)
        label = f"{forward['interface_name']} forward {proto}/{ext_port}"
        pre.append(f"fib daddr type local {proto} dport {ext_port} counter dnat ip to {client_ip}:{dest_port}"
                   f" comment {_q(label)}")
        fwd_back.append(f"oifname {_q(wg)} ip daddr {client_ip} {proto} dport {dest_port} ct status dnat"
                        f" counter accept comment {_q(label)}")

    def chain(name, hook, kind, priority, rules):
        body = [f"\tchain {name} {{", f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;"]
        body += [f"\t\t{rule}" for rule in rules]
        return body + ["\t}"]

    suspended_drops = [
        "ip saddr @suspended4 counter drop", "ip daddr @suspended4 counter drop",
        "ip6 saddr @suspended6 counter drop", "ip6 daddr @suspended6 counter drop",
    ]
    lines = [f"table inet {table} {{"]
    lines += ["\tset suspended4 {", "\t\ttype ipv4_addr", "\t}", "\tset suspended6 {", "\t\ttype ipv6_addr", "\t}"]
    lines += chain("input", "input", "filter", "filter",
                   ['iifname != "lo" ip saddr @suspended4 counter drop',
                    'iifname != "lo" ip6 saddr @suspended6 counter drop'])
    lines += chain("forward", "forward", "filter", "filter",
                   suspended_drops + fwd_c2c + fwd_back + fwd_drop + fwd_out)
    lines += chain("prerouting", "prerouting", "nat", "dstnat", pre)
    lines += chain("postrouting", "postrouting", "nat", "srcnat", post)
    lines.append("}")
    return "\n".join(lines) + "\n"


def rules_hash(rules):
    return hashlib.sha256(rules.encode()).hexdigest()[:20]


def render(ctx, state):
    """The whole table as one nft transaction: (text, rules hash)."""
    table = table_name(ctx)
    rules = render_rules(ctx, state)
    digest = rules_hash(rules)
    body = rules.splitlines()
    body.insert(1, f"\tcomment {_q(HASH_PREFIX + digest)}")
    for family in (4, 6):
        if state["suspended"][family]:
            # after "set suspendedN {" and its "type" line
            at = body.index(f"\tset {SETS[family]} {{") + 2
            body.insert(at, "\t\telements = { " + ", ".join(sorted(state["suspended"][family])) + " }")
    # Create the table if missing so the delete cannot fail, then replace it: one transaction.
    text = f"table inet {table} {{}}\ndelete table inet {table}\n" + "\n".join(body) + "\n"
    return text, digest


# ------------------------------------------------------------------ nft

def _nft(ctx):
    return ctx.settings.get("NFT_BIN", "nft")


def nft_script(ctx, text):
    """Run an nft script in one transaction; errors keep nft's own 'Error:' lines."""
    argv = [_nft(ctx), "-f", "/dev/stdin"]
    try:
        return ctx.runner.run(argv, input=text)
    except CommandError as error:
        if error.reason:
            raise
        lines = [re.sub(r"^/dev/stdin:[0-9:-]+: ", "", line)
                 for line in error.stderr.splitlines() if "Error:" in line]
        raise CommandError(argv, error.returncode, "\n".join(lines) or error.stderr) from None


def live_hash(ctx):
    """The rules hash in the live table's comment; None if the table is missing."""
    argv = [_nft(ctx), "-t", "list", "table", "inet", table_name(ctx)]
    result = ctx.runner.run(argv, check=False)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        raise CommandError(argv, result.returncode, result.stderr)
    match = re.search(r'^\s*comment "' + re.escape(HASH_PREFIX) + r'([0-9a-f]+)"', result.stdout, re.M)
    return match.group(1) if match else ""


def live_elements(ctx, family):
    argv = [_nft(ctx), "-j", "list", "set", "inet", table_name(ctx), SETS[family]]
    result = ctx.runner.run(argv)
    found = set()
    for item in json.loads(result.stdout).get("nftables", []):
        for element in (item.get("set") or {}).get("elem", []):
            value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
            if isinstance(value, str):
                found.add(str(ipaddress.ip_address(value)))
    return found


def element_script(ctx, add=(), remove=()):
    """Add and delete suspended-set elements; deleting a missing element is not an error."""
    table = table_name(ctx)
    lines = []
    for family, address in add:
        lines.append(f"add element inet {table} {SETS[family]} {{ {_address(address, family, 'element')} }}")
    for family, address in remove:
        element = _address(address, family, "element")
        # add-then-delete: delete fails on a missing element, add never does.
        lines.append(f"add element inet {table} {SETS[family]} {{ {element} }}")
        lines.append(f"delete element inet {table} {SETS[family]} {{ {element} }}")
    return "\n".join(lines) + "\n" if lines else ""


def client_addresses(client):
    found = [(4, _address(client["ip"], 4, f"client {client.get('name')}"))]
    if client.get("ip6"):
        found.append((6, _address(client["ip6"], 6, f"client {client.get('name')}")))
    return found


def ensure_table(ctx, state=None):
    """Reload the whole table if its rules differ from the database; returns what changed."""
    # The hash covers the rules only: check it before loading and rendering every set element.
    digest = rules_hash(render_rules(ctx, state or load_state(ctx, elements=False)))
    current = live_hash(ctx)
    if current == digest:
        return []
    text, digest = render(ctx, state or load_state(ctx))
    nft_script(ctx, text)
    reason = "was missing" if current is None else "rules changed"
    return [f"firewall: table inet {table_name(ctx)} loaded ({reason})"]


def sync_elements(ctx, state):
    """Make the suspended sets hold exactly the database's suspended addresses."""
    add, remove = [], []
    for family in (4, 6):
        live = live_elements(ctx, family)
        add += [(family, a) for a in sorted(state["suspended"][family] - live)]
        remove += [(family, a) for a in sorted(live - state["suspended"][family])]
    if add or remove:
        nft_script(ctx, element_script(ctx, add, remove))
        return [f"firewall: suspended sets +{len(add)} -{len(remove)}"]
    return []


# ------------------------------------------------------------------ apply hooks

def client_changed(ctx, interface, client):
    """Block or unblock one client's addresses: one nft transaction on the sets.

    A client with port forwards may have moved address, which changes rules,
    so then the rules are checked (and reloaded if off) first.  If the table
    is missing (reboot, never applied), the whole table is loaded instead.
    """
    has_forwards = next(ctx.db.query("SELECT 1 FROM port_forwards WHERE client_id = ? LIMIT 1",
                                     [client["id"]]), None)
    if has_forwards:
        changes = ensure_table(ctx)
        if changes:
            return changes      # the reload rendered every element from the database
    addresses = client_addresses(client)
    suspended = client.get("suspended_reason") is not None
    if suspended:
        script = element_script(ctx, add=addresses)
    else:
        blocked = blocked_addresses(ctx, addresses)
        if blocked is None:
            return ensure_table(ctx)
        if not blocked:
            return [f"firewall: {client['name']} unblocked"]
        script = element_script(ctx, remove=blocked)
    try:
        nft_script(ctx, script)
    except CommandError:
        if live_hash(ctx) is not None:
            raise
        return ensure_table(ctx)
    return [f"firewall: {client['name']} {'blocked' if suspended else 'unblocked'}"]


def blocked_addresses(ctx, addresses):
    """Those of [(family, address)] that sit in the suspended sets; None if the table is missing.

    Deleting an element costs about 14 ms here whatever the set's size (the
    kernel's commit of a deletion), looking one up a few; and most unblocks
    (a new client, a deleted active one) find nothing to delete.
    """
    found = []
    for family, address in addresses:
        argv = [_nft(ctx), "get", "element", "inet", table_name(ctx), SETS[family], "{", address, "}"]
        result = ctx.runner.run(argv, check=False)
        if result.returncode == 0:
            found.append((family, address))
        elif "Could not process rule: No such file or directory" in result.stderr:
            continue        # the set is there, the element is not
        elif "No such file or directory" in result.stderr:
            return None     # no table (or set)
        else:
            raise CommandError(argv, result.returncode, result.stderr)
    return found


def client_removed(ctx, interface, client):
    changes = ensure_table(ctx)     # its port forwards went with it
    if changes:
        return changes
    blocked = blocked_addresses(ctx, client_addresses(client))
    if blocked is None:
        return ensure_table(ctx)
    if blocked:
        nft_script(ctx, element_script(ctx, remove=blocked))
    return []


def interface_changed(ctx, interface, clients):
    return ensure_table(ctx)


def interface_removed(ctx, interface):
    return ensure_table(ctx)


def reconcile(ctx, interfaces):
    state = load_state(ctx)
    changes = ensure_table(ctx, state)
    if not changes:
        changes = sync_elements(ctx, state)
    return changes


# ------------------------------------------------------------------ diagnostics

def list_table(ctx):
    """The live table with its counters, as nft prints it; None if it is missing."""
    result = ctx.runner.run([_nft(ctx), "list", "table", "inet", table_name(ctx)], check=False)
    return result.stdout if result.returncode == 0 else None


def status_panel(ctx):
    """For the dashboard: is the panel's table loaded with the rules the database asks for?"""
    if not ctx.live:
        return {"state": "warn", "detail": "SYSTEM_APPLY is 0: no rules are loaded."}
    table = table_name(ctx)
    current = live_hash(ctx)
    if current is None:
        return {"state": "down", "detail": f"table inet {table} is not loaded: press Apply."}
    if current != rules_hash(render_rules(ctx, load_state(ctx, elements=False))):
        return {"state": "warn", "detail": f"table inet {table} differs from the database: press Apply."}
    return {"state": "ok", "detail": f"table inet {table} loaded"}

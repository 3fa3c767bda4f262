"""Per-client download and upload limits with tc.

Layout on each tunnel device (``wgN``, and libipsec's ``ipsec0`` for IKEv2):

* download (server -> client): an HTB qdisc ``1:`` on the device's egress;
  one HTB class per client that has a limit, with a bfifo leaf sized to the
  rate; unclassified packets take HTB's direct queue, so unlimited clients
  pay nothing but a hash lookup.
* upload (client -> server): the device's ingress qdisc redirects every
  packet with ``mirred`` to an IFB device (``ifb_name(device)``) that carries
  the same HTB layout, classified on the source address.
* classification: a two-level u32 hash.  The root table hashes the third
  octet of the address into table ``1:`` (256 buckets); each of its buckets
  links to a per-third-octet table (``0x100 + octet``) hashed on the fourth
  octet, where one filter per limited client sits.  A lookup costs two hash
  steps and a one-entry bucket, whatever the number of clients, and each
  filter has its own ``table:bucket:node`` handle, so the 4,095-handle limit
  of one prio never applies.  IPv6 packets are classified into the same
  class (one limit for both families) through a 256-bucket table on the
  address's last byte, at its own prio.

Class ids and filter handles are computed from the client (its address, or
its id where addresses can repeat), so reconcile and single changes always
agree on what to touch.  A change to one client replaces or deletes that
client's classes and filters only, in one ``tc -batch``; nothing is rebuilt.

Calibration: the classes see the inner IP packets.  A full-size TCP packet
of MTU bytes carries MTU - 52 bytes of goodput (20 IP + 20 TCP + 12 bytes of
timestamp option), so a limit of R Mbit/s becomes an HTB rate of
R * MTU / (MTU - 52): what iperf3 and a user's download meter report is then
the declared R (at MTU 1420 the factor is 1.038; bench/bench_shaping.py
measures it).

Leaf queues are byte FIFOs of 100 ms at the rate, but never smaller than two
64 KiB GSO/GRO packets: the qdisc sees TCP's super-packets before they are
cut to the MTU, and a smaller byte queue drops them all.

Capabilities: the code uses only HTB, u32, IFB, mirred and bfifo, which
every Linux kernel with tc has; it does not probe for more.  On a kernel
that also has tc police, flower, matchall or fq_codel it does exactly the
same.  Deliberately: police drops instead of queueing (TCP goodput then
falls well below the limit, so the IFB stays); flower and matchall are not
needed, since the u32 hash already finds a client in two hash steps; fq_codel
as the leaf (``LEAF_QDISC``) would cut queueing delay and is the one change
worth making where it exists.
"""

import hashlib
import ipaddress
import re

from .system import CommandError

ROOT = "1:"
PRIO = 10                   # IPv4 filters
PRIO6 = 11                  # IPv6 filters: the same classes, so both families share one limit
V6_TABLE = 0x2              # IPv6: one 256-bucket table keyed on the address's last byte
L1_TABLE = 0x1
L2_BASE = 0x100
TCP_OVERHEAD = 52           # IPv4 20 + TCP 20 + timestamps 12
QUEUE_SECONDS = 0.1         # leaf queue: 100 ms at the class rate...
QUEUE_MIN_BYTES = 2 * 65536  # ...but room for two GSO/GRO super-packets (see _class_params)
BURST_SECONDS = 0.004       # HTB burst: 4 ms at rate, at least 2 packets
IPSEC_MTU = 1400            # kernel-libipsec's default TUN MTU
LEAF_QDISC = "bfifo"


class ShapingError(CommandError):
    """A limit cannot be expressed on this device; the message says why.

    A CommandError, so apply and the views handle it like a failed command.
    """

    def __init__(self, message):
        self.argv, self.returncode, self.stderr, self.reason = [], None, "", message
        Exception.__init__(self, message)

    def describe(self):
        return self.reason


# -- naming ------------------------------------------------------------------

def ifb_name(device):
    """The IFB device that shapes `device`'s upload: 'ifb-wg0', or a hash when too long."""
    name = f"ifb-{device}"
    if len(name) <= 15:
        return name
    return "ifb" + hashlib.sha1(device.encode()).hexdigest()[:12]


def effective_limits(interface, client):
    """(down, up) Mbit/s for a client: its own, else the interface default; 0 = unlimited.

    A suspended client is not on the live system, so it has no limit to shape.
    """
    if client.get("suspended_reason"):
        return 0.0, 0.0
    down = float(client.get("down_mbit") or 0) or float(interface.get("default_down_mbit") or 0)
    up = float(client.get("up_mbit") or 0) or float(interface.get("default_up_mbit") or 0)
    return down, up


def tc_rate(mbit, mtu):
    """HTB rate in bit/s that yields `mbit` Mbit/s of TCP goodput at this MTU."""
    return int(round(mbit * 1e6 * mtu / (mtu - TCP_OVERHEAD)))


def _class_params(rate, mtu):
    per_second = rate / 8
    burst = max(2 * mtu, int(per_second * BURST_SECONDS))
    # The qdisc sees TCP's GSO (and forwarded GRO) packets of up to 64 KiB before
    # they are cut to the MTU; a byte queue smaller than that drops every one of them
    # (a 1 Mbit/s limit then delivered 0.17 Mbit/s).
    queue = max(QUEUE_MIN_BYTES, int(per_second * QUEUE_SECONDS))
    return burst, queue


class Device:
    """One shaped tunnel device and the rule to number its clients' classes."""

    def __init__(self, name, mtu, networks, by_id):
        self.name = name
        self.ifb = ifb_name(name)
        self.mtu = int(mtu)
        self.networks = sorted({ipaddress.IPv4Network(n, strict=False) for n in networks}, key=str)
        self.by_id = by_id        # True: class minor = client id (addresses may repeat)

    def signature(self):
        nets = ",".join(str(n) for n in self.networks)
        return f"puqvpn shaping {nets} mtu {self.mtu} {'id' if self.by_id else 'ip'} v6"

    def minor(self, client):
        if self.by_id:
            value = int(client["id"])
            if not 0 < value <= 0xffff:
                raise ShapingError(f"client id {value} does not fit a tc class id (1..65535) on {self.name}")
            return value
        return int(ipaddress.IPv4Address(client["ip"])) & 0xffff

    def third_octets(self):
        octets = set()
        for net in self.networks:
            if net.prefixlen < 16:
                return list(range(256))
            first = int(net.network_address) >> 8 & 0xff
            last = int(net.broadcast_address) >> 8 & 0xff
            octets.update(range(first, last + 1))
        return sorted(octets)

    def covers(self, ip):
        address = ipaddress.IPv4Address(ip)
        return any(address in net for net in self.networks)


def wg_device(interface):
    net = ipaddress.IPv4Interface(interface["address"]).network
    return Device(interface["name"], interface.get("mtu") or 1420, [net], by_id=net.prefixlen < 16)


def ipsec_device(ctx, interfaces):
    """libipsec's TUN device, shared by the IKEv2 clients of every interface that enables it."""
    nets = [ipaddress.IPv4Interface(i["address"]).network for i in interfaces if i.get("ikev2_enabled")]
    return Device(ctx.settings.get("IPSEC_DEVICE", "ipsec0"), IPSEC_MTU, nets, by_id=True)


def filter_handle(ip):
    """(table, bucket, node) of a client's u32 filter, from its address."""
    value = int(ipaddress.IPv4Address(ip))
    third, fourth = value >> 8 & 0xff, value & 0xff
    # Several clients share a bucket only when their first two octets differ
    # (pools wider than /16, or ipsec0 serving several interfaces).
    node = (value >> 16) % 4093 + 1
    return L2_BASE + third, fourth, node


def filter_handle6(ip6):
    """(table, bucket, node) of a client's IPv6 filter: bucket = last byte, node from the bytes above.

    Pools hand out IPv6 addresses by host number, so a bucket holds one
    client per 256 and node ids stay distinct for up to a million clients.
    """
    value = int(ipaddress.IPv6Address(ip6)) & 0xffffffff
    return V6_TABLE, value & 0xff, (value >> 8) % 4095 + 1


def _handles(client):
    """Every (prio, protocol, handle) of a client's filters."""
    found = [(PRIO, "ip", filter_handle(client["ip"]))]
    if client.get("ip6"):
        found.append((PRIO6, "ipv6", filter_handle6(client["ip6"])))
    return found


def _prio_of(handle):
    return (PRIO6, "ipv6") if handle[0] == V6_TABLE else (PRIO, "ip")


# -- tc lines ----------------------------------------------------------------

def _skeleton_lines(dev, target, offset):
    """Root HTB and the two-level hash on `target`, keyed on the address at `offset` (16 dst, 12 src)."""
    lines = [
        f"qdisc add dev {target} root handle {ROOT} htb default 0 direct_qlen 1000",
        f"filter add dev {target} parent {ROOT} prio {PRIO} handle {L1_TABLE:x}: protocol ip u32 divisor 256",
    ]
    for octet in dev.third_octets():
        lines.append(f"filter add dev {target} parent {ROOT} prio {PRIO} handle {L2_BASE + octet:x}: "
                     f"protocol ip u32 divisor 256")
        lines.append(f"filter add dev {target} parent {ROOT} prio {PRIO} protocol ip handle "
                     f"{L1_TABLE:x}:{octet:x}:1 u32 ht {L1_TABLE:x}:{octet:x}: match u32 0 0 "
                     f"hashkey mask 0x000000ff at {offset} link {L2_BASE + octet:x}:")
    lines.append(f"filter add dev {target} parent {ROOT} prio {PRIO} protocol ip handle 800::1 u32 ht 800:: "
                 f"match u32 0 0 hashkey mask 0x0000ff00 at {offset} link {L1_TABLE:x}:")
    # IPv6: the last 32 bits of the address sit at 20 (source) or 36 (destination).
    offset6 = 36 if offset == 16 else 20
    lines.append(f"filter add dev {target} parent {ROOT} prio {PRIO6} handle {V6_TABLE:x}: protocol ipv6 "
                 f"u32 divisor 256")
    lines.append(f"filter add dev {target} parent {ROOT} prio {PRIO6} protocol ipv6 u32 match u32 0 0 "
                 f"hashkey mask 0x000000ff at {offset6} link {V6_TABLE:x}:")
    return lines


def skeleton_lines(dev):
    return [
        *_skeleton_lines(dev, dev.name, 16),
        *_skeleton_lines(dev, dev.ifb, 12),
        f"qdisc add dev {dev.name} handle ffff: ingress",
        f"filter add dev {dev.name} parent ffff: prio 1 protocol all u32 match u32 0 0 "
        f"action mirred egress redirect dev {dev.ifb}",
    ]


def client_lines(dev, client, down, up):
    """Replace (or create) the client's classes, leaf queues and filters: idempotent."""
    if not dev.covers(client["ip"]):
        raise ShapingError(f"{client['ip']} is outside the networks shaped on {dev.name}")
    minor = dev.minor(client)
    table, bucket, node = filter_handle(client["ip"])
    lines = []
    for target, mbit, match in ((dev.name, down, "dst"), (dev.ifb, up, "src")):
        if not mbit:
            continue
        rate = tc_rate(mbit, dev.mtu)
        burst, queue = _class_params(rate, dev.mtu)
        lines += [
            f"class replace dev {target} parent {ROOT} classid 1:{minor:x} htb rate {rate}bit ceil {rate}bit "
            f"burst {burst} cburst {burst} quantum {2 * dev.mtu}",
            f"qdisc replace dev {target} parent 1:{minor:x} {LEAF_QDISC} limit {queue}",
            f"filter replace dev {target} parent {ROOT} prio {PRIO} protocol ip handle "
            f"{table:x}:{bucket:x}:{node:x} u32 ht {table:x}:{bucket:x}: match ip {match} {client['ip']}/32 "
            f"flowid 1:{minor:x}",
        ]
        if client.get("ip6"):
            t6, b6, n6 = filter_handle6(client["ip6"])
            lines.append(f"filter replace dev {target} parent {ROOT} prio {PRIO6} protocol ipv6 handle "
                         f"{t6:x}:{b6:x}:{n6:x} u32 ht {t6:x}:{b6:x}: match ip6 {match} {client['ip6']}/128 "
                         f"flowid 1:{minor:x}")
    return lines


# -- live state ----------------------------------------------------------------

def _tc(ctx, *args, check=True):
    return ctx.runner.run([ctx.settings.get("TC_BIN", "tc"), *args], check=check)


# Order inside one batch: deletes, then the root qdisc, classes, leaf queues, filters.  It keeps
# every dependency (a filter needs its class, a class its qdisc) and is much faster than
# per-client order: adding classes between other objects costs the kernel a walk each time,
# and tc slows down when consecutive lines alternate between devices.
_RANK = {("filter", "del"): 0, ("class", "del"): 1, ("qdisc", "add"): 2, ("class", "replace"): 3,
         ("qdisc", "replace"): 4, ("filter", "add"): 5, ("filter", "replace"): 5}


def _batch(ctx, lines):
    """Run tc lines in one process, grouped by device and kind (stable, so order within a group holds)."""
    lines = sorted(lines, key=lambda line: (line.split()[3], _RANK[tuple(line.split()[:2])]))
    if lines:
        # A first build of thousands of classes takes seconds: the kernel walks
        # the classes on every add.  Allow for it beyond the usual timeout.
        timeout = int(ctx.settings.get("COMMAND_TIMEOUT", 15)) + len(lines) // 500
        ctx.runner.run([ctx.settings.get("TC_BIN", "tc"), "-batch", "-"], input="\n".join(lines) + "\n",
                       timeout=timeout)


def _ip(ctx, *args, check=True):
    return ctx.runner.run([ctx.settings.get("IP_BIN", "ip"), *args], check=check)


def _device_state(ctx, dev):
    """'missing' (no tunnel device), 'bare' (no shaping of ours) or 'shaped'."""
    result = _tc(ctx, "qdisc", "show", "dev", dev.name, "root", check=False)
    if result.returncode != 0:
        if "Cannot find device" in result.stderr or "does not exist" in result.stderr:
            return "missing"
        raise CommandError(["tc", "qdisc", "show", "dev", dev.name], result.returncode, result.stderr)
    if not re.search(r"^qdisc htb 1: root", result.stdout, re.M):
        return "bare"
    link = _ip(ctx, "-o", "link", "show", "dev", dev.ifb, check=False)
    if link.returncode != 0 or f"alias {dev.signature()}" not in link.stdout:
        return "bare"
    return "shaped"


_CLASS_RE = re.compile(r"^class htb 1:([0-9a-f]+) ", re.M)


def live_minors(ctx, target):
    """Class minors present under HTB 1: on a device (empty when it has none)."""
    result = _tc(ctx, "class", "show", "dev", target, check=False)
    if result.returncode != 0:
        return set()
    return {int(m, 16) for m in _CLASS_RE.findall(result.stdout)}


def _teardown(ctx, dev):
    _tc(ctx, "qdisc", "del", "dev", dev.name, "root", check=False)
    _tc(ctx, "qdisc", "del", "dev", dev.name, "ingress", check=False)
    _ip(ctx, "link", "del", "dev", dev.ifb, check=False)


def _build(ctx, dev, wanted):
    """Everything for one device from scratch, in one batch (plus the IFB link)."""
    _teardown(ctx, dev)
    _ip(ctx, "link", "add", "name", dev.ifb, "type", "ifb")
    try:
        _ip(ctx, "link", "set", "dev", dev.ifb, "txqueuelen", "1000", "up")
        lines = skeleton_lines(dev)
        for client, down, up in wanted:
            lines += client_lines(dev, client, down, up)
        _batch(ctx, lines)
        # The signature marks a complete build: a half-built device is rebuilt next time.
        _ip(ctx, "link", "set", "dev", dev.ifb, "alias", dev.signature())
    except BaseException:
        _teardown(ctx, dev)
        raise


def live_filters(ctx, target):
    """{(table, bucket, node): class minor} of the per-client u32 filters on a device."""
    result = _tc(ctx, "filter", "show", "dev", target, "parent", ROOT, check=False)
    if result.returncode != 0:
        return {}
    return {tuple(int(x, 16) for x in m[:3]): int(m[3], 16) for m in _FILTER_RE.findall(result.stdout)}


_FILTER_RE = re.compile(r"fh ([0-9a-f]+):([0-9a-f]+):([0-9a-f]+) .*?flowid 1:([0-9a-f]+)")


def _filter_del(target, handle):
    table, bucket, node = handle
    prio, protocol = _prio_of(handle)
    return (f"filter del dev {target} parent {ROOT} prio {prio} protocol {protocol} handle "
            f"{table:x}:{bucket:x}:{node:x} u32")


def converge(ctx, dev, clients_limits):
    """Make one device's shaping match `clients_limits` [(client, down, up)]: the interface-level apply.

    Builds from scratch when the device has no (or an outdated) layout;
    otherwise deletes stale filters and classes and replaces every wanted
    one, in one batch, so clients whose limit did not change lose nothing.
    Returns 'missing', 'unshaped', 'built' or 'updated'.
    """
    wanted = [(c, d, u) for c, d, u in clients_limits if d or u]
    state = _device_state(ctx, dev)
    if state == "missing":
        return "missing"
    if not wanted:
        if state == "shaped":
            _teardown(ctx, dev)
        return "unshaped"
    minors = {dev.minor(c) for c, _d, _u in wanted}
    handles = [h for c, _d, _u in wanted for _p, _proto, h in _handles(c)]
    if len(minors) != len(wanted) or len(set(handles)) != len(handles):
        raise ShapingError(f"two clients map to the same tc class or filter on {dev.name}")
    if state == "bare":
        _build(ctx, dev, wanted)
        return "built"
    lines = []
    for target, index in ((dev.name, 1), (dev.ifb, 2)):
        keep = {(handle, dev.minor(c)) for c, *limits in wanted if limits[index - 1]
                for _prio, _proto, handle in _handles(c)}
        keep_minors = {minor for _handle, minor in keep}
        for handle, minor in sorted(live_filters(ctx, target).items()):
            if (handle, minor) not in keep:
                lines.append(_filter_del(target, handle))
        for minor in sorted(live_minors(ctx, target) - keep_minors):
            lines.append(f"class del dev {target} classid 1:{minor:x}")
    for client, down, up in wanted:
        lines += client_lines(dev, client, down, up)
    _batch(ctx, lines)
    return "updated"


# What tc says when a delete finds nothing to delete: already in the wanted state.  The last two
# come from a device with no HTB of ours at all (a wg device or ipsec0 where nobody has a limit).
_ABSENT = ("No such file or directory", "Specified filter handle not found", "Cannot find specified class",
           "Cannot find device", "does not exist", "Parent Qdisc doesn't exist",
           "Cannot find specified filter chain")


def _delete_quietly(ctx, lines):
    """Run delete lines with -force; a line whose object is already gone is fine, anything else raises."""
    if not lines:
        return
    argv = [ctx.settings.get("TC_BIN", "tc"), "-force", "-batch", "-"]
    result = ctx.runner.run(argv, input="\n".join(lines) + "\n", check=False)
    if result.returncode == 0:
        return
    # tc prints the kernel's complaint, then "Command failed -:N", for each failing line.
    parts = re.split(r"Command failed -:(\d+)\n?", result.stderr)
    for complaint, number in zip(parts[::2], parts[1::2] + [None]):
        if complaint.strip() and not any(marker in complaint for marker in _ABSENT):
            # Say the kernel's words and the line, not tc's closing "error talking to the kernel".
            said = [text for text in complaint.strip().splitlines() if "error talking to the kernel" not in text]
            where = f" (in: {lines[int(number) - 1]})" if number and int(number) <= len(lines) else ""
            raise CommandError(argv, result.returncode, "; ".join(said or [complaint.strip()]) + where)


def _client_delete_lines(dev, client, targets):
    minor = dev.minor(client)
    lines = []
    for target in targets:
        lines += [_filter_del(target, handle) for _prio, _proto, handle in _handles(client)]
        lines.append(f"class del dev {target} classid 1:{minor:x}")
    return lines


def _delete_client(ctx, dev, client, targets):
    """Delete one client's filters and classes on `targets`; already absent is fine.

    tc words "nothing to delete" differently across kernels and device states,
    so a complaint it does not recognise is settled by looking: if nothing of
    this client is left on the targets, the wanted state holds.
    """
    try:
        _delete_quietly(ctx, _client_delete_lines(dev, client, targets))
    except CommandError:
        if _client_left(ctx, dev, client, targets):
            raise


def _client_left(ctx, dev, client, targets):
    """The targets that still hold a class or filter of this client."""
    minor = dev.minor(client)
    handles = {handle for _prio, _proto, handle in _handles(client)}
    return [target for target in targets
            if minor in live_minors(ctx, target) or handles & set(live_filters(ctx, target))]


def apply_client(ctx, dev, client, down, up):
    """Bring one client's classes and filters on one device in line: the per-change path.

    Touches only this client's classes (by its minor) and the filters at its
    address's handle.  Optimistic: one `tc -batch` replaces what should be
    there and one `tc -force -batch` deletes what should not; only when that
    fails is the device inspected (recreated tunnel: built afresh from the
    database; missing device: nothing to do).
    """
    unlimited = [target for target, mbit in ((dev.name, down), (dev.ifb, up)) if not mbit]
    try:
        _delete_client(ctx, dev, client, unlimited)
        _batch(ctx, client_lines(dev, client, down, up))
        return "updated" if (down or up) else "unchanged"
    except CommandError:
        state = _device_state(ctx, dev)
        if state == "missing":
            return "missing"
        if state == "shaped":
            raise
    wanted = ([(client, down, up)] if (down or up) else []) + _other_wanted(ctx, dev, client)
    if not wanted:
        return "unshaped"
    _build(ctx, dev, wanted)
    return "built"


def _other_wanted(ctx, dev, client):
    """Other limited clients of the device, for a first build triggered by one client."""
    return [(c, d, u) for c, d, u in _rows_for_device(ctx, dev) if c["id"] != client["id"] and (d or u)]


def _rows_for_device(ctx, dev):
    ipsec = ctx.settings.get("IPSEC_DEVICE", "ipsec0")
    result = []
    for interface in ctx.db.query("SELECT * FROM interfaces WHERE enabled"):
        if interface["name"] == dev.name or (dev.name == ipsec and interface["ikev2_enabled"]):
            for client in ctx.db.query("SELECT * FROM clients WHERE interface_id = ?", [interface["id"]]):
                down, up = effective_limits(interface, client)
                result.append((client, down, up))
    return result


def remove_client(ctx, dev, client):
    """Delete one client's filters and classes (the row as it was), if present."""
    _delete_client(ctx, dev, client, (dev.name, dev.ifb))


# -- the apply backend -----------------------------------------------------------

def _ipsec(ctx):
    interfaces = list(ctx.db.query("SELECT * FROM interfaces WHERE enabled AND ikev2_enabled"))
    return ipsec_device(ctx, interfaces) if interfaces else None


def _said(device, outcome, what):
    """A change line for apply's report, or nothing when nothing was touched."""
    if outcome in ("built", "updated"):
        return [f"{device}: {what} {'built' if outcome == 'built' else 'updated'}"]
    if outcome == "torn down":
        return [f"{device}: limits removed"]
    return []


# The hooks below are the apply backend (docs/architecture.md); each returns
# the list of changes it made, for apply's report.

def client_changed(ctx, interface, client):
    down, up = effective_limits(interface, client)
    what = f"limits of {client['name']}"
    changes = []
    if interface.get("enabled", 1):
        changes += _said(interface["name"], apply_client(ctx, wg_device(interface), client, down, up), what)
    if interface.get("ikev2_enabled"):
        dev = _ipsec(ctx)
        if dev is not None:
            changes += _said(dev.name, apply_client(ctx, dev, client, down, up), what)
    return changes


def client_removed(ctx, interface, client):
    remove_client(ctx, wg_device(interface), client)
    if interface.get("ikev2_enabled"):
        dev = _ipsec(ctx)
        if dev is not None:
            remove_client(ctx, dev, client)
    return []


def _interface(ctx, interface, clients):
    dev = wg_device(interface)
    if interface.get("enabled", 1):
        outcome = converge(ctx, dev, [(c, *effective_limits(interface, c)) for c in clients])
        return _said(dev.name, outcome, "client limits")
    if _device_state(ctx, dev) == "shaped":
        _teardown(ctx, dev)
        return _said(dev.name, "torn down", "")
    return []


def interface_changed(ctx, interface, clients):
    return _interface(ctx, interface, clients) + _said(
        ctx.settings.get("IPSEC_DEVICE", "ipsec0"), ipsec_device_changed(ctx), "IKEv2 client limits")


def interface_removed(ctx, interface):
    _teardown(ctx, wg_device(interface))
    ipsec_device_changed(ctx)
    return []


def reconcile(ctx, interfaces):
    """Every device as the database says; one interface's failure does not stop the others."""
    from .apply import BackendErrors

    changes, errors = [], {}
    for interface, clients in interfaces:
        try:
            changes += _interface(ctx, interface, clients)
        except (CommandError, ShapingError) as error:
            errors[interface["name"]] = str(error)
    try:
        changes += _said(ctx.settings.get("IPSEC_DEVICE", "ipsec0"), ipsec_device_changed(ctx),
                         "IKEv2 client limits")
    except (CommandError, ShapingError) as error:
        errors[None] = str(error)
    if errors:
        raise BackendErrors(errors, changes)
    return changes


def ipsec_device_changed(ctx):
    """Re-apply every IKEv2 limit on libipsec's TUN device.

    strongswan.py calls this after charon (re)creates the device: it comes
    up bare, so this builds the whole layout in one batch.  Does nothing
    while the device is missing.  Returns what converge() did.
    """
    if not ctx.live:
        return "off"
    dev = _ipsec(ctx)
    if dev is None:
        name = ctx.settings.get("IPSEC_DEVICE", "ipsec0")
        dev = Device(name, IPSEC_MTU, [], by_id=True)
        if _device_state(ctx, dev) == "missing":
            return "missing"
        _teardown_if_ours(ctx, dev)
        return "unshaped"
    return converge(ctx, dev, _rows_for_device(ctx, dev))


def heal_ipsec_device(ctx):
    """Put the IKEv2 limits back if libipsec's device has lost them; otherwise touch nothing.

    charon creates the device bare each time it starts, so a restarted charon
    drops every IKEv2 limit.  strongswan.py calls this after it has talked to
    charon: two quick probes when all is well, one build when the device came
    back bare.  Returns 'built', or why nothing was done ('off', 'missing',
    'shaped', 'unlimited').
    """
    if not ctx.live:
        return "off"
    dev = _ipsec(ctx)
    rows = _rows_for_device(ctx, dev) if dev is not None else []
    if not any(down or up for _client, down, up in rows):
        return "unlimited"
    state = _device_state(ctx, dev)
    if state != "bare":
        return state
    return converge(ctx, dev, rows)


def _teardown_if_ours(ctx, dev):
    link = _ip(ctx, "-o", "link", "show", "dev", dev.ifb, check=False)
    if link.returncode == 0 and "alias puqvpn shaping" in link.stdout:
        _teardown(ctx, dev)


# -- services for the views ---------------------------------------------------------

def apply_interface_default(ctx, interface_id):
    """Put every client of an interface on the interface default (limits 0) and apply it in one batch.

    Returns how many clients had their own limit.
    """
    from ..db import transaction
    with transaction(ctx.db):
        changed = ctx.db.execute(
            "UPDATE clients SET down_mbit = 0, up_mbit = 0, updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') "
            "WHERE interface_id = ? AND (down_mbit != 0 OR up_mbit != 0)", [interface_id]).rowcount
    if ctx.live:
        interface = next(ctx.db.query("SELECT * FROM interfaces WHERE id = ?", [interface_id]))
        clients = list(ctx.db.query("SELECT * FROM clients WHERE interface_id = ?", [interface_id]))
        interface_changed(ctx, interface, clients)
    return changed


_STATS_RE = re.compile(
    r"^class htb 1:([0-9a-f]+) .*?rate (\S+) ceil (\S+).*?\n\s*Sent (\d+) bytes (\d+) pkt "
    r"\(dropped (\d+), overlimits (\d+).*?\n\s*backlog (\S+) (\d+)p", re.M | re.S)


def parse_class_stats(text):
    """`tc -s class show` -> [{minor, rate, ceil, bytes, packets, dropped, overlimits, backlog}]."""
    rows = []
    for block in re.split(r"\n(?=class )", text.strip()):
        found = _STATS_RE.search(block)
        if found:
            minor, rate, ceil, sent, packets, dropped, over, backlog, backlog_packets = found.groups()
            rows.append({"minor": int(minor, 16), "rate": rate, "ceil": ceil, "bytes": int(sent),
                         "packets": int(packets), "dropped": int(dropped), "overlimits": int(over),
                         "backlog": backlog, "backlog_packets": int(backlog_packets)})
    return rows


def class_counters(ctx, interface, clients):
    """The live classes of an interface with their counters, for the interface page.

    [{client (row or None), direction ('down'/'up'), device, minor, rate, bytes, packets, dropped, ...}]
    """
    if not ctx.live:
        return []
    dev = wg_device(interface)
    by_minor = {}
    for client in clients:
        try:
            by_minor[dev.minor(client)] = client
        except ShapingError:
            pass
    rows = []
    for target, direction in ((dev.name, "down"), (dev.ifb, "up")):
        result = _tc(ctx, "-s", "class", "show", "dev", target, check=False)
        if result.returncode != 0:
            continue
        for row in parse_class_stats(result.stdout):
            row.update(device=target, direction=direction, client=by_minor.get(row["minor"]))
            rows.append(row)
    rows.sort(key=lambda r: ((r["client"] or {}).get("ip_int", 0), r["direction"]))
    return rows

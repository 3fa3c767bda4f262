"""Connection logging for abuse reports: who had this exit address and port at that time?

Optional per interface (``interfaces.conn_logging``).  The panel owns a
second nftables table, ``inet puqvpn_log`` (``CONNLOG_NFT_TABLE``), loaded
atomically and never touching the main ``inet puqvpn`` table:

* a filter chain on postrouting at priority ``srcnat + 1`` sees the first
  packet of every new connection *after* masquerade, so its header holds
  the exit address and the translated source port;
* the packet's conntrack original source (``ct original ip saddr``) picks,
  through a verdict map, the client's own chain, whose ``log`` statement
  carries a stable prefix ``puqvpn-conn <interface> <client ip> <client name> ``;
* the log goes to NFLOG group ``CONNLOG_NFLOG_GROUP``, read by the panel's
  listener (``python -m puqvpn.services.connlog listen``), which stores one
  row per connection in its own SQLite file (``CONNLOG_DATABASE``), with the
  client's name as it was at that time, and writes the same line to syslog.
  NFLOG works in network namespaces and needs no syslog daemon; with
  ``CONNLOG_KERNEL_LOG=1`` the rule also logs through the kernel log.

Only headers are copied to the listener (a snap length of 128 bytes), and
only these fields are kept: time, interface, client name and address,
protocol, exit address and port, destination address and port.  Rows older
than ``CONNLOG_RETENTION_DAYS`` are deleted.
"""

import argparse
import datetime
import hashlib
import ipaddress
import os
import re
import signal
import socket
import sqlite3
import struct
import sys
import time
from pathlib import Path

from .system import CommandError

PREFIX = "puqvpn-conn"
HASH_PREFIX = "puqvpn connlog "
SNAPLEN = 128
TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
NAME_CHARS = re.compile(r"[A-Za-z0-9_.@=+-]+")
LISTENER_MARK = "puqvpn.services.connlog"
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORTED = {6, 17, 132}
ROOT = Path(__file__).resolve().parent.parent.parent


class ConnlogError(ValueError):
    """A connection-logging setting or value is not valid; the message names it."""


# ------------------------------------------------------------------ the nftables table

def table_name(settings):
    name = str(settings.get("CONNLOG_NFT_TABLE", "puqvpn_log"))
    if not TABLE_NAME.fullmatch(name) or name == str(settings.get("NFT_TABLE", "puqvpn")):
        raise ConnlogError(f"CONNLOG_NFT_TABLE {name!r} must be a table name of its own")
    return name


def nflog_group(settings):
    group = str(settings.get("CONNLOG_NFLOG_GROUP", "7301")).strip()
    if not group.isdigit() or not 0 <= int(group) <= 65535:
        raise ConnlogError(f"CONNLOG_NFLOG_GROUP {group!r} must be a number from 0 to 65535")
    return int(group)


def _address(value, version, what):
    try:
        address = ipaddress.ip_address(value)
    except (TypeError, ValueError):
        raise ConnlogError(f"{what}: {value!r} is not an IP address") from None
    if address.version != version:
        raise ConnlogError(f"{what}: {value!r} is not IPv{version}")
    return str(address)


def log_prefix(interface, address, client_name):
    """The stable prefix, at most 127 bytes as the kernel allows; names are validated upstream."""
    for value, what in ((interface, "interface"), (client_name, "client name")):
        if not NAME_CHARS.fullmatch(str(value)):
            raise ConnlogError(f"{what} {value!r} cannot go into a log prefix")
    head = f"{PREFIX} {interface} {address} "
    return head + client_name[:126 - len(head)] + " "


def logged(db):
    """[(interface, [clients])] for enabled interfaces with connection logging on."""
    pairs = []
    for interface in db.query("SELECT * FROM interfaces WHERE enabled = 1 AND conn_logging = 1 ORDER BY name"):
        clients = list(db.query("SELECT id, name, ip, ip6 FROM clients WHERE interface_id = ? ORDER BY ip_int",
                                [interface["id"]]))
        pairs.append((interface, clients))
    return pairs


def render_rules(settings, pairs):
    """The table's chains (no hash comment); None when no interface logs."""
    if not pairs:
        return None
    table = table_name(settings)
    group = nflog_group(settings)
    kernel = str(settings.get("CONNLOG_KERNEL_LOG", "0")).strip().lower() in ("1", "true", "yes", "on")
    maps = {4: [], 6: []}
    chains = []
    for interface, clients in pairs:
        for client in clients:
            for version, column in ((4, "ip"), (6, "ip6")):
                if not client.get(column):
                    continue
                address = _address(client[column], version, f"client {client['name']}")
                chain = f"client{int(client['id'])}_{version}"
                maps[version].append(f"{address} : jump {chain}")
                prefix = log_prefix(interface["name"], address, client["name"])
                statements = [f'log prefix "{prefix}" group {group} snaplen {SNAPLEN}']
                if kernel:
                    statements.append(f'log prefix "{prefix}" level info')
                chains += [f"\tchain {chain} {{"] + [f"\t\t{s}" for s in statements] + ["\t}"]
    # Named maps keep the hook chain short: nft loads and lists it quickly at thousands of clients.
    body = []
    for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        body += [f"\tmap clients{version} {{", f"\t\ttype {kind} : verdict"]
        if maps[version]:
            body.append(f"\t\telements = {{ {', '.join(maps[version])} }}")
        body.append("\t}")
    body += ["\tchain postrouting {",
             # After masquerade (srcnat = 100): the header holds the exit address and port.
             "\t\ttype filter hook postrouting priority srcnat + 1; policy accept;",
             "\t\tct state new ct original ip saddr vmap @clients4",
             "\t\tct state new ct original ip6 saddr vmap @clients6",
             "\t}"]
    return "\n".join([f"table inet {table} {{"] + body + chains + ["}"]) + "\n"


def render(settings, pairs):
    """(nft script, hash): create-if-missing, delete, add, in one transaction; or delete only."""
    table = table_name(settings)
    rules = render_rules(settings, pairs)
    head = f"table inet {table} {{}}\ndelete table inet {table}\n"
    if rules is None:
        return head, None
    digest = hashlib.sha256(rules.encode()).hexdigest()[:20]
    body = rules.splitlines()
    # The hash sits on the hook chain, which lists in milliseconds (its maps' elements are left out).
    at = body.index("\tchain postrouting {") + 1
    body.insert(at, f'\t\tcomment "{HASH_PREFIX}{digest}"')
    return head + "\n".join(body) + "\n", digest


def _nft(ctx):
    return str(ctx.settings.get("NFT_BIN", "nft"))


def live_hash(ctx):
    """The hash in the live hook chain's comment; None if the table (or chain) is missing."""
    argv = [_nft(ctx), "-t", "list", "chain", "inet", table_name(ctx.settings), "postrouting"]
    result = ctx.runner.run(argv, check=False)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        raise CommandError(argv, result.returncode, result.stderr)
    match = re.search(r'comment "' + re.escape(HASH_PREFIX) + r'([0-9a-f]+)"', result.stdout)
    return match.group(1) if match else ""


def ensure_table(ctx):
    """Load the logging table if it differs from the database (or remove it); returns what changed."""
    pairs = logged(ctx.db)
    text, digest = render(ctx.settings, pairs)
    current = live_hash(ctx)
    if current == digest:
        return []
    argv = [_nft(ctx), "-f", "/dev/stdin"]
    try:
        ctx.runner.run(argv, input=text)
    except CommandError as error:
        if error.reason:
            raise
        lines = [line for line in error.stderr.splitlines() if "Error:" in line]
        raise CommandError(argv, error.returncode, "\n".join(lines) or error.stderr) from None
    table = table_name(ctx.settings)
    if digest is None:
        return [f"connlog: table inet {table} removed"]
    names = ", ".join(interface["name"] for interface, _ in pairs)
    return [f"connlog: table inet {table} loaded (logging {names})"]


# ------------------------------------------------------------------ the listener process

def pidfile(settings):
    return Path(str(settings.get("CONNLOG_PIDFILE", "/run/puqvpn/connlog.pid")))


def _listener(settings):
    """(pid, argv) of the running listener from its pid file, checked against /proc; else (None, None)."""
    try:
        pid = int(pidfile(settings).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None, None
    if LISTENER_MARK.encode() not in cmdline:
        return None, None
    return pid, [part.decode(errors="replace") for part in cmdline.split(b"\0")[:-1]]


def listener_pid(settings):
    return _listener(settings)[0]


def listener_argv(settings):
    """The listener's command line (run through the Runner, so it lands in NETNS)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from {LISTENER_MARK} import main; sys.exit(main())")
    return [sys.executable, "-c", code, "listen",
            "--group", str(nflog_group(settings)),
            "--database", str(settings["CONNLOG_DATABASE"]),
            "--pidfile", str(pidfile(settings)),
            "--retention-days", str(int(settings.get("CONNLOG_RETENTION_DAYS", 90))),
            "--syslog", "1" if str(settings.get("CONNLOG_SYSLOG", "1")) in ("1", "true", "yes", "on") else "0"]


def start_listener(ctx):
    # The listener binds the NFLOG group before it detaches, so a failure shows here.
    ctx.runner.run(listener_argv(ctx.settings))
    if not hasattr(ctx.runner, "wrap"):
        return                      # a FakeRunner started nothing
    # Its pid file follows the detach by a moment; wait so the next check sees it.
    deadline = time.monotonic() + 5
    while listener_pid(ctx.settings) is None and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_listener(settings):
    pid = listener_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while listener_pid(settings) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def ensure(ctx):
    """Rules and listener as the database wants them; returns what changed."""
    changes = ensure_table(ctx)
    wanted = bool(logged(ctx.db))
    pid, argv = _listener(ctx.settings)
    if wanted and pid is None:
        start_listener(ctx)
        changes.append("connlog: listener started")
    elif wanted and argv[3:] != listener_argv(ctx.settings)[3:]:
        # A setting it was started with (group, retention, syslog, file) has changed.
        stop_listener(ctx.settings)
        start_listener(ctx)
        changes.append("connlog: listener restarted (settings changed)")
    elif not wanted and pid is not None:
        stop_listener(ctx.settings)
        changes.append("connlog: listener stopped")
    return changes


# ------------------------------------------------------------------ apply backend

def client_changed(ctx, interface, client):
    # A new, renamed or readdressed client changes its map entry or prefix.
    return ensure(ctx) if interface.get("conn_logging") else []


def client_removed(ctx, interface, client):
    return ensure(ctx) if interface.get("conn_logging") else []


def interface_changed(ctx, interface, clients):
    return ensure(ctx)


def interface_removed(ctx, interface):
    return ensure(ctx)


def reconcile(ctx, interfaces):
    return ensure(ctx)


# ------------------------------------------------------------------ NFLOG (netlink) reading

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_TIMESTAMP, NFULA_PAYLOAD, NFULA_PREFIX = 3, 9, 10
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4


def _attr(kind, data):
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _attrs(body):
    found, offset = {}, 0
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        found[kind & 0x7FFF] = body[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _messages(data):
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        yield kind, data[offset + 16:offset + length]
        offset += (length + 3) & ~3


def open_nflog(group):
    """A netlink socket bound to an NFLOG group, copying at most SNAPLEN bytes of each packet."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))

    def configure(attribute, seq):
        header = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group))
        payload = header + attribute
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        sock.send(struct.pack("=IHHII", 16 + len(payload), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload)
        for reply_kind, body in _messages(sock.recv(65536)):
            if reply_kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", body)[0]
                if code:
                    raise OSError(-code, f"NFLOG group {group}: {os.strerror(-code)}"
                                  + (" (another listener holds it)" if -code == 16 else ""))

    configure(_attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)), 1)
    configure(_attr(NFULA_CFG_MODE, struct.pack(">IBB", SNAPLEN, NFULNL_COPY_PACKET, 0)), 2)
    # Deliver each packet at once rather than batching them for a second.
    configure(_attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)), 3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def parse_packet(payload):
    """(proto name, source ip, source port, destination ip, destination port) from an IP header."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        header = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src, dst = socket.inet_ntop(socket.AF_INET, payload[12:16]), socket.inet_ntop(socket.AF_INET, payload[16:20])
    elif version == 6 and len(payload) >= 40:
        header = 40
        proto = payload[6]
        src, dst = socket.inet_ntop(socket.AF_INET6, payload[8:24]), socket.inet_ntop(socket.AF_INET6, payload[24:40])
    else:
        return None
    sport = dport = None
    if proto in PORTED and len(payload) >= header + 4:
        sport, dport = struct.unpack_from(">HH", payload, header)
    return PROTOCOLS.get(proto, str(proto)), src, sport, dst, dport


def parse_prefix(raw):
    """'puqvpn-conn wg0 10.8.0.2 alice ' -> (interface, client ip, client name); None if not ours."""
    text = raw.rstrip(b"\0").decode("ascii", "replace").strip()
    parts = text.split(" ")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    return parts[1], parts[2], parts[3]


def entry_from_message(body, now=None):
    """One NFLOG packet message -> a connection entry dict, or None if it is not one of ours."""
    attributes = _attrs(body[4:])           # after struct nfgenmsg
    owner = parse_prefix(attributes.get(NFULA_PREFIX, b""))
    packet = parse_packet(attributes.get(NFULA_PAYLOAD, b""))
    if owner is None or packet is None:
        return None
    at = now if now is not None else time.time()
    if NFULA_TIMESTAMP in attributes:
        seconds, micros = struct.unpack(">QQ", attributes[NFULA_TIMESTAMP][:16])
        at = seconds + micros / 1e6
    proto, exit_ip, exit_port, dest_ip, dest_port = packet
    interface, client_ip, client = owner
    return {"at": round(at, 3), "interface": interface, "client": client, "client_ip": client_ip,
            "proto": proto, "exit_ip": exit_ip, "exit_port": exit_port, "dest_ip": dest_ip, "dest_port": dest_port}


def syslog_line(entry):
    port = lambda p: f":{p}" if p is not None else ""  # noqa: E731
    return (f"{entry['interface']} client={entry['client']} ip={entry['client_ip']} proto={entry['proto']} "
            f"exit={entry['exit_ip']}{port(entry['exit_port'])} dst={entry['dest_ip']}{port(entry['dest_port'])}")


# ------------------------------------------------------------------ storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS connections (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,                 -- unix time of the connection's first packet
    interface TEXT NOT NULL,
    client TEXT NOT NULL,             -- the client's name at that time
    client_ip TEXT NOT NULL,
    proto TEXT NOT NULL,
    exit_ip TEXT NOT NULL,            -- source after NAT
    exit_port INTEGER,
    dest_ip TEXT NOT NULL,
    dest_port INTEGER
);
CREATE INDEX IF NOT EXISTS connections_exit ON connections (exit_port, at);
CREATE INDEX IF NOT EXISTS connections_at ON connections (at)
"""


def open_store(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = not path.exists()
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    if fresh:
        os.chmod(path, 0o600)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 30000")
    for statement in SCHEMA.split(";"):
        conn.execute(statement)
    return conn


COLUMNS = ("at", "interface", "client", "client_ip", "proto", "exit_ip", "exit_port", "dest_ip", "dest_port")


def store(conn, entries):
    with conn:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO connections ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                         [tuple(entry[c] for c in COLUMNS) for entry in entries])


def prune(conn, retention_days, now=None):
    """Delete entries older than the retention; returns how many went."""
    cutoff = (now if now is not None else time.time()) - float(retention_days) * 86400
    with conn:
        conn.execute("BEGIN")
        return conn.execute("DELETE FROM connections WHERE at < ?", [cutoff]).rowcount


# ------------------------------------------------------------------ who was it?

def parse_time(text):
    """'2026-12-04 14:03', '2026-12-04T14:03:27Z', '…+01:00' or unix seconds -> unix time (naive = UTC)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise ConnlogError(f"{text[:40]!r} is not a time such as 2026-12-04 14:03:27 (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def who(conn, exit_port, at, exit_ip=None, dest_ip=None, before=86400, after=300):
    """Connections that used this exit port around ``at``, newest first.

    Only connection starts are logged, so a connection still open at the
    reported time started before it: the answer looks back ``before``
    seconds (a day by default) and a little ahead (``after``) for clocks
    that disagree.  The first entry at or before ``at`` is the likeliest.
    """
    try:
        port = int(exit_port)
    except (TypeError, ValueError):
        raise ConnlogError(f"{exit_port!r} is not a port") from None
    if not 0 <= port <= 65535:
        raise ConnlogError(f"{exit_port!r} is not a port")
    sql = "SELECT * FROM connections WHERE exit_port = ? AND at BETWEEN ? AND ?"
    args = [port, at - before, at + after]
    if exit_ip:
        sql += " AND exit_ip = ?"
        args.append(str(ipaddress.ip_address(exit_ip)))
    if dest_ip:
        sql += " AND dest_ip = ?"
        args.append(str(ipaddress.ip_address(dest_ip)))
    rows = [dict(row) for row in conn.execute(sql + " ORDER BY at DESC LIMIT 200", args)]
    likeliest = next((row for row in rows if row["at"] <= at + 1), rows[-1] if rows else None)
    for row in rows:
        row["likeliest"] = row is likeliest
        row["time"] = format_time(row["at"])
    return rows


def format_time(at):
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def recent(conn, limit=100, client=None):
    sql, args = "SELECT * FROM connections", []
    if client:
        sql += " WHERE client = ?"
        args.append(client)
    rows = [dict(row) for row in conn.execute(sql + " ORDER BY at DESC LIMIT ?", args + [int(limit)])]
    for row in rows:
        row["time"] = format_time(row["at"])
    return rows


# ------------------------------------------------------------------ the listener's main loop

def listen(sock, conn, retention_days, use_syslog, stop=lambda: False):
    if use_syslog:
        import syslog
        syslog.openlog(PREFIX, 0, syslog.LOG_DAEMON)
    sock.settimeout(1)
    last_prune = float("-inf")     # prune at start, then hourly
    while not stop():
        if time.monotonic() - last_prune > 3600:
            prune(conn, retention_days)
            last_prune = time.monotonic()
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError as error:
            if error.errno == 105:     # ENOBUFS: the kernel dropped messages under load; go on
                sys.stderr.write("connlog: receive buffer overrun, some connections were not logged\n")
                continue
            raise
        now = time.time()
        entries = [entry for kind, body in _messages(data)
                   if kind == ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)
                   for entry in [entry_from_message(body, now)] if entry]
        if entries:
            store(conn, entries)
            if use_syslog:
                for entry in entries:
                    syslog.syslog(syslog.LOG_INFO, syslog_line(entry))


def _daemonize(pid_path):
    """Detach (double fork, stdio to /dev/null) and write the pid file; returns in the daemon."""
    if os.fork():
        os._exit(0)
    os.setsid()
    child = os.fork()
    if child:
        pid_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        temp = pid_path.with_suffix(".tmp")
        temp.write_text(f"{child}\n")
        os.replace(temp, pid_path)
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m puqvpn.services.connlog",
                                     description="puqvpn connection log: listener and lookup")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("listen", help="read NFLOG and store connections (detaches)")
    run.add_argument("--group", type=int, required=True)
    run.add_argument("--database", required=True)
    run.add_argument("--pidfile", required=True)
    run.add_argument("--retention-days", type=float, default=90)
    run.add_argument("--syslog", default="1")
    run.add_argument("--foreground", action="store_true")
    ask = commands.add_parser("who", help="who had this exit port at that time?")
    ask.add_argument("--database", required=True)
    ask.add_argument("--port", required=True)
    ask.add_argument("--time", required=True, help="UTC unless an offset is given")
    ask.add_argument("--address", help="the exit address, if the server has several")
    args = parser.parse_args(argv)

    if args.command == "who":
        rows = who(open_store(args.database), args.port, parse_time(args.time), args.address)
        for row in rows:
            print(("* " if row["likeliest"] else "  ") + row["time"] + " " + syslog_line(row))
        return 0 if rows else 1

    try:
        sock = open_nflog(args.group)
        open_store(args.database).close()       # fail here, before detaching, if it cannot be opened
    except (OSError, sqlite3.Error) as error:
        print(f"connlog: {error}", file=sys.stderr)
        return 1
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    if not args.foreground:
        _daemonize(Path(args.pidfile))
    try:
        # Opened again after the fork: SQLite's WAL locks are fcntl locks, which a
        # forked child does not inherit; without them another process would reset
        # the shared-memory index under this one.
        conn = open_store(args.database)
        listen(sock, conn, args.retention_days, args.syslog == "1", stop=lambda: bool(stopping))
    finally:
        if not args.foreground:
            try:
                if Path(args.pidfile).read_text().split()[0] == str(os.getpid()):
                    Path(args.pidfile).unlink()
            except (OSError, IndexError):
                pass
    return 0


# ------------------------------------------------------------------ CLI command and status

def _click_command():
    import click

    @click.command("who-was-it")
    @click.option("--port", required=True, help="The exit (source) port from the abuse report.")
    @click.option("--time", "when", required=True, help="When, e.g. '2026-12-04 14:03:27' (UTC) or with +01:00.")
    @click.option("--address", default=None, help="The exit address, if the server has several.")
    @click.option("--dest", default=None, help="The destination address from the report, to narrow it down.")
    @click.pass_obj
    def who_command(env, port, when, address, dest):
        """Which client had this exit port at that time (from the connection log)?"""
        try:
            rows = who(open_store(env.settings["CONNLOG_DATABASE"]), port, parse_time(when), address, dest)
        except (ConnlogError, ValueError) as error:
            raise click.ClickException(str(error)) from None
        if not rows:
            raise click.ClickException("no logged connection used that port around that time")
        for row in rows:
            click.echo(("* " if row["likeliest"] else "  ") + row["time"] + " " + syslog_line(row))
    return who_command


who_command = _click_command()


def status_panel(ctx):
    if not logged(ctx.db):
        return None
    if listener_pid(ctx.settings) is None:
        return {"state": "down", "detail": "Connection logging is on, but its listener is not running."}
    return {"state": "ok", "detail": "Connection logging: listener running."}


if __name__ == "__main__":
    sys.exit(main())

"""The clients' private DNS resolver: Debian's unbound, run and configured by the panel.

One switch (the ``options`` row ``resolver``) turns it on.  unbound then
listens only on the gateway addresses of the enabled interfaces, answers
only the interfaces' pools (everything else is refused), forwards to up to
two upstream resolvers (optionally over DNS-over-TLS) or, without
forwarders, resolves from the root itself.  An optional blocklist file
(hosts, plain domain list or RPZ ``CNAME .`` lines) becomes ``local-zone``
entries.

The configuration lives in its own file (``UNBOUND_CONF``), never in
Debian's ``unbound.conf.d``, and unbound runs as its own daemon
(``unbound -c UNBOUND_CONF``) with a pid file and a local control socket in
``UNBOUND_RUN_DIR``.  A new configuration is written to a temporary file,
checked with ``unbound-checkconf`` and only then renamed over the old one
and loaded, so a bad setting leaves the running resolver as it was.

The apply layer runs this module as a backend: a changed or removed
interface changes the listen addresses and the access rules.
"""

import ipaddress
import json
import os
import re
import signal
import time
from pathlib import Path

from .system import CommandError
from .util import write_atomic

OPTION_KEY = "resolver"
MANAGED_MARK = "# managed by puqvpn: the clients' DNS resolver"

DEFAULTS = {
    "enabled": False,
    "forwarders": ["1.1.1.1", "1.0.0.1"],
    "tls": False,                  # DNS over TLS to the forwarders (port 853)
    "cache_max_ttl": 86400,
    "blocklist": "",               # path of a hosts/domain/RPZ list, empty for none
    "block_action": "always_nxdomain",
    "exclude": [],                 # interface names whose clients keep the interface's own DNS
}
BLOCK_ACTIONS = ("always_nxdomain", "always_refuse")
MAX_BLOCKLIST_ENTRIES = 2_000_000
# Names hosts files list for the machine itself; they are not blocklist entries.
HOSTS_LOCAL_NAMES = {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
                     "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
                     "ip6-allhosts", "0.0.0.0"}
LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
TLS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
SAFE_PATH = re.compile(r"/[A-Za-z0-9_.,+=@/-]*")


class ResolverError(ValueError):
    """A resolver setting is not valid or the resolver could not be changed; the message says which."""

    def __init__(self, message, fields=None):
        super().__init__(message)
        self.fields = fields or {}


# ------------------------------------------------------------------ options

def load_options(db):
    """The resolver's options as saved in the UI, over the defaults."""
    row = next(db.query("SELECT value FROM options WHERE key = ?", [OPTION_KEY]), None)
    options = dict(DEFAULTS)
    if row:
        try:
            saved = json.loads(row["value"])
        except ValueError:
            saved = {}
        if isinstance(saved, dict):
            options.update({key: value for key, value in saved.items() if key in DEFAULTS})
    return options


def save_options(db, options):
    """Validate and store the options; returns the cleaned options. Raises ResolverError."""
    cleaned = validate_options(options)
    db.execute("INSERT INTO options (key, value) VALUES (?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
               [OPTION_KEY, json.dumps(cleaned)])
    return cleaned


def parse_forwarder(text):
    """'1.1.1.1', '1.1.1.1@853', '1.1.1.1#cloudflare-dns.com', '[2606:4700::1111]@853#…' -> dict."""
    text = str(text).strip()
    if not text:
        raise ResolverError("empty forwarder")
    if any(c in text for c in "\"'\n\r\0\t ;"):
        raise ResolverError(f"forwarder {text[:60]!r}: unexpected characters")
    rest, _, name = text.partition("#")
    host, port = rest, None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise ResolverError(f"forwarder {text!r}: missing ']'")
        if after:
            if not after.startswith("@"):
                raise ResolverError(f"forwarder {text!r}: expected @port after ']'")
            port = after[1:]
    elif "@" in rest:
        host, _, port = rest.partition("@")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ResolverError(f"forwarder {text!r}: {host!r} is not an IP address") from None
    number = None
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ResolverError(f"forwarder {text!r}: port must be 1 to 65535")
        number = int(port)
    if name and not TLS_NAME.fullmatch(name):
        raise ResolverError(f"forwarder {text!r}: {name!r} is not a host name")
    return {"address": str(address), "port": number, "tls_name": name or None}


def format_forwarder(forwarder, tls):
    """unbound's forward-addr value: address[@port][#name]."""
    text = forwarder["address"]
    port = forwarder["port"] or (853 if tls else None)
    if port:
        text += f"@{port}"
    if tls and forwarder["tls_name"]:
        text += f"#{forwarder['tls_name']}"
    return text


def validate_options(options, read_list=True):
    """Check every option; returns a cleaned dict or raises ResolverError with per-field messages.

    ``read_list=False`` skips reading the blocklist file (the caller has just read it).
    """
    merged = dict(DEFAULTS)
    merged.update({key: value for key, value in dict(options).items() if key in DEFAULTS})
    errors = {}
    cleaned = {"enabled": bool(merged["enabled"]), "tls": bool(merged["tls"])}

    forwarders = merged["forwarders"]
    if isinstance(forwarders, str):
        forwarders = [item for item in re.split(r"[,\s]+", forwarders) if item]
    forwarders = [str(item).strip() for item in forwarders if str(item).strip()]
    if len(forwarders) > 2:
        errors["forwarders"] = "at most two forwarders"
    else:
        try:
            parsed = [parse_forwarder(item) for item in forwarders]
            cleaned["forwarders"] = forwarders
            if cleaned["tls"] and not parsed:
                errors["tls"] = "DNS over TLS needs at least one forwarder"
        except ResolverError as error:
            errors["forwarders"] = str(error)

    try:
        ttl = int(str(merged["cache_max_ttl"]).strip())
        if not 0 <= ttl <= 604800:
            raise ValueError
        cleaned["cache_max_ttl"] = ttl
    except ValueError:
        errors["cache_max_ttl"] = "a number of seconds from 0 to 604800 (a week)"

    blocklist = str(merged["blocklist"] or "").strip()
    if blocklist and read_list:
        try:
            read_blocklist(blocklist)
        except ResolverError as error:
            errors["blocklist"] = str(error)
    cleaned["blocklist"] = blocklist

    if merged["block_action"] not in BLOCK_ACTIONS:
        errors["block_action"] = f"one of {', '.join(BLOCK_ACTIONS)}"
    cleaned["block_action"] = merged["block_action"]

    exclude = merged["exclude"]
    if isinstance(exclude, str):
        exclude = [item for item in re.split(r"[,\s]+", exclude) if item]
    if not all(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_=+.-]{1,15}", name) for name in exclude):
        errors["exclude"] = "interface names only"
    cleaned["exclude"] = sorted(set(exclude)) if "exclude" not in errors else []

    if errors:
        raise ResolverError("; ".join(f"{k}: {v}" for k, v in errors.items()), errors)
    return cleaned


# ------------------------------------------------------------------ blocklist

def _domain(text, number):
    name = text.strip().rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]          # a zone blocks every name below it anyway
    labels = name.split(".")
    if not name or len(name) > 253 or not all(LABEL.fullmatch(label) for label in labels):
        raise ResolverError(f"blocklist line {number}: {text[:80]!r} is not a domain name")
    return name


def parse_blocklist(text):
    """Domains from a hosts file, a plain domain list or RPZ 'name CNAME .' lines.

    Comments (# or ;) and the names hosts files give the machine itself are
    skipped; any other line that is not one of these forms is an error that
    names the line, so a corrupt download never half-applies.
    """
    found = set()
    for number, raw in enumerate(text.splitlines(), 1):
        if "\0" in raw or "\"" in raw or "\\" in raw:
            raise ResolverError(f"blocklist line {number}: unexpected characters")
        line = re.split(r"[#;]", raw, maxsplit=1)[0].strip() if not raw.lstrip().startswith("$") else ""
        if not line:
            continue
        fields = line.split()
        upper = [f.upper() for f in fields]
        if len(fields) == 1:
            names = fields
        elif _is_ip(fields[0]):                                  # hosts: address name [name ...]
            names = fields[1:]
        elif "CNAME" in upper:                                   # RPZ: name [ttl] [IN] CNAME .
            at = upper.index("CNAME")
            if fields[at + 1:] not in (["."], ["*."]):
                raise ResolverError(f"blocklist line {number}: only 'CNAME .' RPZ rules are supported")
            names = fields[:1]
        elif set(upper[1:]) & {"SOA", "NS"} or upper[0] in ("SOA", "NS", "@"):
            continue                                             # the RPZ zone's own records
        else:
            raise ResolverError(f"blocklist line {number}: {line[:80]!r} is neither a hosts line, "
                                "a domain nor an RPZ rule")
        for name in names:
            if name.lower().rstrip(".") in HOSTS_LOCAL_NAMES:
                continue
            found.add(_domain(name, number))
        if len(found) > MAX_BLOCKLIST_ENTRIES:
            raise ResolverError(f"blocklist has more than {MAX_BLOCKLIST_ENTRIES} entries")
    return sorted(found)


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def read_blocklist(path):
    path = str(path)
    if not SAFE_PATH.fullmatch(path) or "/../" in path + "/":
        raise ResolverError(f"blocklist: {path[:80]!r} must be an absolute path of plain characters")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ResolverError(f"blocklist: cannot read {path}: {error}") from None
    return parse_blocklist(text)


# ------------------------------------------------------------------ what unbound serves

def _interfaces(db):
    return list(db.query("SELECT * FROM interfaces WHERE enabled = 1 ORDER BY name"))


def listen_plan(interfaces):
    """[(gateway address, pool network)] for every enabled interface, IPv4 then IPv6."""
    plan = []
    for interface in interfaces:
        for column in ("address", "address6"):
            if interface.get(column):
                gateway = ipaddress.ip_interface(interface[column])
                plan.append((str(gateway.ip), str(gateway.network)))
    return plan


def is_enabled(db):
    return bool(load_options(db)["enabled"])


def effective_dns(db, interface):
    """The DNS servers a client profile of this interface pushes.

    With the resolver on (and the interface not excluded on the resolver
    page) that is the interface's own gateway address(es); otherwise the
    interface's ``dns`` column as it is.
    """
    options = load_options(db)
    if not options["enabled"] or interface["name"] in options["exclude"] or not interface.get("enabled", 1):
        return interface.get("dns") or ""
    gateways = [str(ipaddress.ip_interface(interface[c]).ip) for c in ("address", "address6") if interface.get(c)]
    return ", ".join(gateways)


def _path_setting(settings, name):
    value = str(settings[name])
    if not SAFE_PATH.fullmatch(value):
        raise ResolverError(f"{name} {value!r} must be an absolute path of plain characters")
    return value


def run_paths(settings):
    run_dir = _path_setting(settings, "UNBOUND_RUN_DIR").rstrip("/") or "/"
    return {"pidfile": f"{run_dir}/unbound.pid", "control": f"{run_dir}/unbound.ctl", "dir": run_dir}


def render(settings, options, interfaces, blocklist=()):
    """The whole unbound.conf text.  Every value was validated; nothing can leave its line."""
    options = validate_options(options, read_list=False)
    plan = listen_plan(interfaces)
    paths = run_paths(settings)
    user = str(settings.get("UNBOUND_USER", "unbound"))
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}|", user):
        raise ResolverError(f"UNBOUND_USER {user!r} is not a user name")
    lines = [
        MANAGED_MARK,
        "server:",
        "\tverbosity: 1",
        "\tdo-daemonize: yes",
        f'\tpidfile: "{paths["pidfile"]}"',
        f'\tusername: "{user}"',
        '\tchroot: ""',
        f'\tdirectory: "{paths["dir"]}"',
        "\tuse-syslog: yes",
        "\tinterface-automatic: no",
        # The gateway addresses appear when WireGuard brings an interface up;
        # freebind lets unbound start before that and keep its sockets across restarts of wg.
        "\tip-freebind: yes",
        "\tdo-ip4: yes",
        "\tdo-ip6: yes",
        "\tport: 53",
        "\thide-identity: yes",
        "\thide-version: yes",
        "\tqname-minimisation: yes",
        "\tprefetch: yes",
        f"\tcache-max-ttl: {options['cache_max_ttl']}",
        '\tmodule-config: "iterator"',
    ]
    lines += [f"\tinterface: {address}" for address in dict.fromkeys(a for a, _ in plan)]
    # Refuse everyone, then allow the pools: more specific rules win.
    # unbound allows localhost by default: refuse it too, only VPN clients are served.
    lines += ["\taccess-control: 0.0.0.0/0 refuse", "\taccess-control: ::/0 refuse",
              "\taccess-control: 127.0.0.0/8 refuse", "\taccess-control: ::1/128 refuse"]
    lines += [f"\taccess-control: {network} allow" for network in dict.fromkeys(n for _, n in plan)]
    if options["tls"]:
        bundle = _path_setting(settings, "UNBOUND_TLS_CERT_BUNDLE")
        lines.append(f'\ttls-cert-bundle: "{bundle}"')
    lines += [f'\tlocal-zone: "{name}." {options["block_action"]}' for name in blocklist]
    lines += [
        "remote-control:",
        "\tcontrol-enable: yes",
        f'\tcontrol-interface: "{paths["control"]}"',
        "\tcontrol-use-cert: no",
    ]
    forwarders = [parse_forwarder(item) for item in options["forwarders"]]
    if forwarders:
        lines += ["forward-zone:", '\tname: "."']
        lines += [f"\tforward-addr: {format_forwarder(f, options['tls'])}" for f in forwarders]
        lines.append(f"\tforward-tls-upstream: {'yes' if options['tls'] else 'no'}")
    return "\n".join(lines) + "\n"


def desired_config(ctx):
    options = load_options(ctx.db)
    blocklist = read_blocklist(options["blocklist"]) if options["blocklist"] else []
    return render(ctx.settings, options, _interfaces(ctx.db), blocklist)


def listen_lines(text):
    return sorted(line.strip() for line in (text or "").splitlines() if line.strip().startswith("interface:"))


# ------------------------------------------------------------------ the daemon

def _bin(ctx, name, default):
    return str(ctx.settings.get(name, default))


def conf_path(ctx):
    return Path(_path_setting(ctx.settings, "UNBOUND_CONF"))


def running_pid(ctx):
    """unbound's PID from its pid file if that process is alive and is unbound; else None."""
    try:
        pid = int(Path(run_paths(ctx.settings)["pidfile"]).read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    # A stale pid file must never make the panel signal another unbound (say, the system's).
    ours = Path(argv[0].decode(errors="replace")).name == "unbound" and str(conf_path(ctx)).encode() in argv
    return pid if ours else None


def check(ctx, path):
    """unbound-checkconf on a file; raises ResolverError with unbound's own complaint."""
    argv = [_bin(ctx, "UNBOUND_CHECKCONF_BIN", "unbound-checkconf"), str(path)]
    try:
        ctx.runner.run(argv)
    except CommandError as error:
        detail = (error.stderr or error.reason or str(error)).strip().splitlines()
        detail = detail[-1] if detail else str(error)
        detail = re.sub(r"^\[\d+\] unbound-checkconf\[[\d:]+\] ", "", detail).replace(str(path), "the new config")
        raise ResolverError(f"unbound-checkconf rejected the resolver configuration: {detail}") from None


def control(ctx, *args, check=True):
    argv = [_bin(ctx, "UNBOUND_CONTROL_BIN", "unbound-control"), "-c", str(conf_path(ctx)), *args]
    return ctx.runner.run(argv, check=check)


def start(ctx):
    Path(run_paths(ctx.settings)["dir"]).mkdir(parents=True, exist_ok=True, mode=0o755)
    ctx.runner.run([_bin(ctx, "UNBOUND_BIN", "unbound"), "-c", str(conf_path(ctx))])
    # unbound writes its pid file just after it forks; wait for it briefly.
    deadline = time.monotonic() + 5
    while running_pid(ctx) is None and time.monotonic() < deadline and not _fake(ctx):
        time.sleep(0.05)


def _fake(ctx):
    return not hasattr(ctx.runner, "wrap")


def stop(ctx):
    """Stop the panel's unbound (by the PID in its own pid file); True if one was running."""
    pid = running_pid(ctx)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while running_pid(ctx) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    if running_pid(ctx) == pid:
        os.kill(pid, signal.SIGKILL)
    return True


def _write_checked(ctx, text):
    """Write text next to the config, check it, then rename it into place. Raises before the rename."""
    path = conf_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # unbound-checkconf checks that the working directory exists.
    Path(run_paths(ctx.settings)["dir"]).mkdir(parents=True, exist_ok=True, mode=0o755)
    # unbound re-reads it after dropping to its own user on reload.
    write_atomic(path, text, mode=0o644, check=lambda temp: check(ctx, temp), dir_mode=0o755)


def ensure(ctx):
    """Make the live resolver match the database; returns what changed.

    Off: stop the panel's unbound if it runs.  On: write, check and load a
    changed configuration; restart when the listen addresses changed (unbound
    cannot rebind port 53 after dropping privileges), reload otherwise, and
    start it if it is not running.  A configuration unbound-checkconf rejects
    raises ResolverError and leaves both the file and the daemon untouched.
    """
    options = load_options(ctx.db)
    if not options["enabled"]:
        return ["resolver: stopped"] if stop(ctx) else []
    if not listen_plan(_interfaces(ctx.db)):
        # With no interface unbound would fall back to listening on localhost.
        return ["resolver: stopped (no enabled interface to serve)"] if stop(ctx) else []
    text = desired_config(ctx)
    path = conf_path(ctx)
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    running = running_pid(ctx) is not None
    changes = []
    if text != current:
        _write_checked(ctx, text)
        changes.append(f"resolver: configuration written to {path}")
    if not running:
        start(ctx)
        return changes + ["resolver: started"]
    if text == current:
        return changes
    if listen_lines(text) != listen_lines(current):
        stop(ctx)
        start(ctx)
        return changes + ["resolver: restarted (listen addresses changed)"]
    control(ctx, "reload")
    return changes + ["resolver: reloaded"]


def apply_options(ctx, options):
    """Save new options (missing ones keep their saved value) and put them live.

    Raises ResolverError (validation or unbound-checkconf) with the old
    options back in place and nothing live changed.
    """
    previous = load_options(ctx.db)
    # Fields not given keep their saved value.
    cleaned = save_options(ctx.db, {**previous, **dict(options)})     # one statement: atomic on its own
    if not ctx.live:
        return cleaned, []
    try:
        changes = ensure(ctx)
    except ResolverError:
        save_options(ctx.db, previous)
        raise
    return cleaned, changes


# ------------------------------------------------------------------ apply backend

def interface_changed(ctx, interface, clients):
    return ensure(ctx) if _wanted_or_running(ctx) else []


def interface_removed(ctx, interface):
    return ensure(ctx) if _wanted_or_running(ctx) else []


def reconcile(ctx, interfaces):
    return ensure(ctx) if _wanted_or_running(ctx) else []


def _wanted_or_running(ctx):
    return is_enabled(ctx.db) or running_pid(ctx) is not None


# ------------------------------------------------------------------ status

def status(ctx):
    """{'enabled', 'running', 'pid', 'detail'} for the page and the dashboard."""
    enabled = is_enabled(ctx.db)
    pid = running_pid(ctx)
    info = {"enabled": enabled, "running": pid is not None, "pid": pid, "detail": ""}
    if pid is not None:
        result = control(ctx, "status", check=False)
        if result.returncode == 0:
            version = re.search(r"^version: (\S+)", result.stdout, re.M)
            uptime = re.search(r"^uptime: (\d+)", result.stdout, re.M)
            info["detail"] = (f"unbound {version.group(1) if version else ''} running"
                              + (f", up {int(uptime.group(1)) // 60} min" if uptime else ""))
        else:
            info["detail"] = "unbound is running but its control socket does not answer"
    return info


def status_panel(ctx):
    info = status(ctx)
    if not info["enabled"]:
        if info["running"]:
            return {"state": "warn", "detail": "Switched off, but unbound is still running: press Apply."}
        return {"state": "ok", "detail": "Off: clients use the DNS servers set on each interface."}
    if not info["running"]:
        return {"state": "down", "detail": "Switched on, but unbound is not running."}
    plan = listen_plan(_interfaces(ctx.db))
    where = ", ".join(dict.fromkeys(a for a, _ in plan)) or "no interface yet"
    state = "ok" if "control socket" not in info["detail"] else "warn"
    return {"state": state, "detail": f"{info['detail']}; answering VPN clients on {where}."}

"""Every setting of the panel, in one place.

A setting's value comes from, in order of precedence:

1. the environment variable ``PUQVPN_<NAME>``;
2. the settings file (``PUQVPN_CONFIG``, default ``instance/puqvpn.conf``;
   the installer uses ``/etc/puqvpn/puqvpn.conf``), ``NAME = value`` lines;
3. the default below.

The README's settings table is generated from ``SETTINGS``; a test keeps the
two in step.  No Flask here: the service layer reads the same object.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (default, description).  Defaults are strings, as they would be
# written in the file; "{INSTANCE_DIR}" is expanded after loading.
SETTINGS = {
    # web
    "HOST": ("127.0.0.1", "Address the panel listens on."),
    "PORT": ("8080", "TCP port the panel listens on."),
    "TLS_CERT": ("", "PEM certificate for HTTPS; empty serves plain HTTP."),
    "TLS_KEY": ("", "PEM private key for HTTPS."),
    "PUBLIC_URL": ("", "Base URL used in share links, e.g. https://vpn.example.com:8443."),
    "ALLOWED_WEB_IPS": ("", "Comma-separated addresses or networks allowed to reach the panel; empty allows all."),
    "SESSION_TIMEOUT_MINUTES": ("60", "Idle minutes before a login session expires."),
    "REQUIRE_2FA": ("0", "1 makes TOTP two-factor login mandatory for every account."),
    "THREADS": ("4", "waitress worker threads; more than about two per core only wait for the interpreter."),
    # data
    "INSTANCE_DIR": (str(ROOT / "instance"), "Folder for the database, secret key and backups."),
    "DATABASE": ("{INSTANCE_DIR}/puqvpn.sqlite3", "SQLite database file."),
    "SECRET_KEY_FILE": ("{INSTANCE_DIR}/secret_key", "File holding the session signing key (made on first run)."),
    "BACKUP_DIR": ("{INSTANCE_DIR}/backups", "Folder for scheduled backups."),
    "BACKUP_KEEP": ("7", "How many scheduled backups to keep."),
    "BACKUP_INTERVAL_HOURS": ("24", "Hours between scheduled backups; 0 turns them off."),
    # system
    "SYSTEM_APPLY": ("1", "0 keeps the panel off the live system (database and files only)."),
    "BACKGROUND_JOBS": ("1", "0 turns off the poller, expiry checks and scheduled backups."),
    "NETNS": ("", "Run every system command inside this network namespace (tests)."),
    "COMMAND_TIMEOUT": ("15", "Seconds before a system command is given up."),
    "WG_BACKEND": ("auto", "WireGuard backend: auto, kernel or userspace (wireguard-go)."),
    "WG_CONF_DIR": ("/etc/wireguard", "Folder for the wgN.conf files."),
    "WG_RUN_DIR": ("/var/run/wireguard", "wireguard-go's control socket folder."),
    "WG_BIN": ("wg", "The wg tool."),
    "WIREGUARD_GO_BIN": ("wireguard-go", "The userspace WireGuard daemon."),
    "IP_BIN": ("ip", "iproute2's ip."),
    "TC_BIN": ("tc", "iproute2's tc."),
    "NFT_BIN": ("nft", "The nftables tool."),
    "SYSCTL_BIN": ("sysctl", "The sysctl tool."),
    "NFT_TABLE": ("puqvpn", "Name of the nftables table (family inet) the panel owns."),
    "ONLINE_TIMEOUT": ("180", "A client is online if its last handshake is newer than this many seconds."),
    "POLL_INTERVAL": ("30", "Seconds between traffic and status polls."),
    "HOURLY_RETENTION_DAYS": ("31", "Days hourly traffic buckets are kept before roll-up into days."),
    "AUDIT_RETENTION_DAYS": ("365", "Days audit-log entries are kept; 0 keeps them for ever."),
    "METRICS_TOKEN": ("", "Bearer token for /metrics; empty disables the endpoint."),
    # IKEv2 / strongSwan
    "SWANCTL_DIR": ("/etc/swanctl", "swanctl's folder (conf.d, x509, x509ca, private)."),
    "SWANCTL_BIN": ("swanctl", "The swanctl tool."),
    "VICI_SOCKET": ("/var/run/charon.vici", "charon's VICI socket."),
    "IPSEC_BACKEND": ("auto", "IPsec backend: auto, kernel or libipsec."),
    "IPSEC_DEVICE": ("ipsec0", "libipsec's TUN device, where IKEv2 traffic is shaped."),
    "STRONGSWAN_CONF_DIR": ("/etc/strongswan.d", "Folder for strongSwan's plugin settings."),
    # clients' DNS resolver (unbound) and connection logging
    "UNBOUND_CONF": ("/etc/unbound/puqvpn.conf", "The resolver's own unbound config file (not in unbound.conf.d)."),
    "UNBOUND_RUN_DIR": ("/run/puqvpn-unbound", "Folder for the resolver's pid file and control socket."),
    "UNBOUND_USER": ("unbound", "User unbound drops to after binding; empty keeps root."),
    "UNBOUND_BIN": ("unbound", "The unbound daemon."),
    "UNBOUND_CHECKCONF_BIN": ("unbound-checkconf", "unbound's config checker, run before every reload."),
    "UNBOUND_CONTROL_BIN": ("unbound-control", "unbound's control tool (reload, status)."),
    "UNBOUND_TLS_CERT_BUNDLE": ("/etc/ssl/certs/ca-certificates.crt", "CA bundle for DNS over TLS to the forwarders."),
    "CONNLOG_DATABASE": ("{INSTANCE_DIR}/connlog.sqlite3", "SQLite file holding connection-log entries."),
    "CONNLOG_RETENTION_DAYS": ("90", "Days connection-log entries are kept before deletion."),
    "CONNLOG_NFT_TABLE": ("puqvpn_log", "nftables table (family inet) holding the connection-log rules."),
    "CONNLOG_NFLOG_GROUP": ("7301", "NFLOG group the logging rules send new connections to."),
    "CONNLOG_PIDFILE": ("/run/puqvpn/connlog.pid", "Pid file of the connection-log listener."),
    "CONNLOG_SYSLOG": ("1", "1 also writes every connection-log entry to syslog (/dev/log) as puqvpn-conn."),
    "CONNLOG_KERNEL_LOG": ("0", "1 also logs new connections through the kernel log (dmesg, journal)."),
}


def _read_file(path):
    values = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return values
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}:{number}: expected NAME = value")
        values[name.strip().upper()] = value.strip()
    return values


class Settings(dict):
    """A dict of setting name -> string, with typed getters."""

    def int(self, name):
        return int(self[name])

    def float(self, name):
        return float(self[name])

    def bool(self, name):
        return str(self[name]).strip().lower() in ("1", "true", "yes", "on")

    def list(self, name):
        return [item.strip() for item in str(self[name]).split(",") if item.strip()]

    def path(self, name):
        return Path(self[name])


def load(config_file=None, environ=None, **overrides):
    """Build the settings from defaults, the file, the environment and overrides."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get("PUQVPN_CONFIG") or str(ROOT / "instance" / "puqvpn.conf")
    from_file = _read_file(config_file)
    unknown = set(from_file) - set(SETTINGS)
    if unknown:
        raise ValueError(f"{config_file}: unknown setting(s) {', '.join(sorted(unknown))}")
    settings = Settings()
    for name, (default, _help) in SETTINGS.items():
        value = from_file.get(name, default)
        value = environ.get(f"PUQVPN_{name}", value)
        settings[name] = str(overrides.get(name, value))
    for name, value in overrides.items():
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name}")
    for name, value in settings.items():
        if "{INSTANCE_DIR}" in value:
            settings[name] = value.replace("{INSTANCE_DIR}", settings["INSTANCE_DIR"])
    settings["CONFIG_FILE"] = config_file
    return settings


def markdown_table():
    """The README's settings table: python -m puqvpn.settings"""
    lines = ["| Environment variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, (default, description) in SETTINGS.items():
        shown = default.replace(str(ROOT), "<checkout>") if default else ""
        lines.append(f"| `PUQVPN_{name}` | `{shown}` | {description} |" if shown
                     else f"| `PUQVPN_{name}` | | {description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())

"""Versioned schema migrations.

``PRAGMA user_version`` holds the version a database is at.  Each migration
runs once, in order, inside a transaction, so an installed server upgrades
without losing rows.  Never edit a migration that has shipped: add a new one.
"""

MIGRATIONS = {}


def migration(version):
    def register(function):
        assert version not in MIGRATIONS, f"migration {version} defined twice"
        MIGRATIONS[version] = function
        return function
    return register


def run_script(conn, sql):
    """Run several statements inside the caller's transaction.

    sqlite3's executescript() would commit first, so split instead; the
    schema has no ';' inside strings.
    """
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration(1)
def initial_schema(conn):
    run_script(conn, """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'operator', 'viewer')),
        totp_secret TEXT,
        recovery_codes TEXT NOT NULL DEFAULT '[]',   -- JSON list of hashes
        session_version INTEGER NOT NULL DEFAULT 0,  -- bumped to end every session
        created_at TEXT NOT NULL,
        last_login_at TEXT
    );

    CREATE TABLE interfaces (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,                   -- wg0, fixed once created
        label TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL,                       -- gateway/prefix: 10.8.0.1/24
        address6 TEXT,                               -- fd42:42::1/64 or NULL
        listen_port INTEGER NOT NULL UNIQUE,
        endpoint TEXT NOT NULL,                      -- host clients dial
        ext_device TEXT NOT NULL DEFAULT '',         -- NAT out of this device
        nat INTEGER NOT NULL DEFAULT 1,
        client_to_client INTEGER NOT NULL DEFAULT 0,
        dns TEXT NOT NULL DEFAULT '',                -- comma separated
        mtu INTEGER NOT NULL DEFAULT 1420,
        keepalive INTEGER NOT NULL DEFAULT 25,
        allowed_ips TEXT NOT NULL DEFAULT '0.0.0.0/0, ::/0',
        default_down_mbit REAL NOT NULL DEFAULT 0,   -- 0 = unlimited
        default_up_mbit REAL NOT NULL DEFAULT 0,
        ikev2_enabled INTEGER NOT NULL DEFAULT 0,
        conn_logging INTEGER NOT NULL DEFAULT 0,
        enabled INTEGER NOT NULL DEFAULT 1,
        private_key TEXT NOT NULL,
        public_key TEXT NOT NULL,
        apply_error TEXT,                            -- last failed live apply, NULL when in sync
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE clients (
        id INTEGER PRIMARY KEY,
        interface_id INTEGER NOT NULL REFERENCES interfaces(id) ON DELETE CASCADE,
        name TEXT NOT NULL UNIQUE,
        ip TEXT NOT NULL,
        ip_int INTEGER NOT NULL,                     -- ip as integer, for allocation and sorting
        ip6 TEXT,
        private_key TEXT,                            -- NULL for imported peers
        public_key TEXT NOT NULL UNIQUE,
        preshared_key TEXT,
        username TEXT NOT NULL UNIQUE,               -- IKEv2 EAP identity
        password TEXT NOT NULL,                      -- EAP-MSCHAPv2 needs the secret itself
        down_mbit REAL NOT NULL DEFAULT 0,           -- 0 = interface default
        up_mbit REAL NOT NULL DEFAULT 0,
        expires_at TEXT,                             -- YYYY-MM-DD, end of that day UTC
        quota_gb REAL NOT NULL DEFAULT 0,            -- monthly, 0 = none
        quota_reset_day INTEGER NOT NULL DEFAULT 1,
        note TEXT NOT NULL DEFAULT '',
        suspended_reason TEXT,                       -- NULL = active, else admin, expired or quota
        suspended_at TEXT,
        rx_bytes INTEGER NOT NULL DEFAULT 0,         -- lifetime, received by the server (client upload)
        tx_bytes INTEGER NOT NULL DEFAULT 0,         -- lifetime, sent by the server (client download)
        period_rx_bytes INTEGER NOT NULL DEFAULT 0,  -- since period_start, for the quota
        period_tx_bytes INTEGER NOT NULL DEFAULT 0,
        period_start TEXT,
        last_handshake INTEGER,                      -- unix time, from the poller
        endpoint TEXT,                               -- remote address:port, from the poller
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (interface_id, ip),
        UNIQUE (interface_id, ip6)
    );
    CREATE INDEX clients_interface_ip ON clients (interface_id, ip_int);

    CREATE TABLE port_forwards (
        id INTEGER PRIMARY KEY,
        interface_id INTEGER NOT NULL REFERENCES interfaces(id) ON DELETE CASCADE,
        client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
        ext_port INTEGER NOT NULL,
        dest_port INTEGER NOT NULL,
        UNIQUE (proto, ext_port)
    );

    -- counters as last read, so deltas survive resets and restarts
    CREATE TABLE counters (
        client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        source TEXT NOT NULL,                        -- 'wg' or an IKE SA id
        rx INTEGER NOT NULL,
        tx INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (client_id, source)
    );
    CREATE TABLE traffic_hourly (
        client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        hour TEXT NOT NULL,                          -- YYYY-MM-DDTHH, UTC
        rx INTEGER NOT NULL DEFAULT 0,
        tx INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (client_id, hour)
    );
    CREATE TABLE traffic_daily (
        client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        day TEXT NOT NULL,                           -- YYYY-MM-DD, UTC
        rx INTEGER NOT NULL DEFAULT 0,
        tx INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (client_id, day)
    );

    CREATE TABLE certificates (
        kind TEXT PRIMARY KEY CHECK (kind IN ('ca', 'server')),
        cert_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,
        created_at TEXT NOT NULL
    );

    -- settings changed in the UI (the settings file holds the rest)
    CREATE TABLE options (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL                          -- JSON
    );

    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        token_hash TEXT NOT NULL UNIQUE,
        allowed_ips TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL DEFAULT 'admin',
        expires_at TEXT,
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );

    CREATE TABLE share_links (
        id INTEGER PRIMARY KEY,
        client_id INTEGER NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        token_hash TEXT NOT NULL UNIQUE,
        expires_at TEXT NOT NULL,
        max_uses INTEGER NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );

    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,                         -- user, token:NAME or cli
        source_ip TEXT NOT NULL DEFAULT '',
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL,                       -- ok, denied, failed
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_log_at ON audit_log (at);
    """)


def current_version(conn):
    return conn.execute("PRAGMA user_version").fetchone()[0]


def latest_version():
    return max(MIGRATIONS)


def migrate(conn, target=None):
    """Bring the database up to ``target`` (default: the latest). Returns the versions applied."""
    target = latest_version() if target is None else target
    applied = []
    for version in sorted(MIGRATIONS):
        if version <= current_version(conn) or version > target:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied

"""The admin's command line: ``puqvpn <command>`` (also ``flask --app puqvpn puqvpn <command>``).

Commands work without the web app: they read the settings file and open
the database directly, so they also serve when the panel is down.

Other modules add commands by naming them in ``COMMANDS`` as
``"module:attribute"`` (a click command or group); they are imported only
when run or listed, so a slow or broken import never breaks the rest.
"""

import importlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

INSTALLED_CONFIG = "/etc/puqvpn/puqvpn.conf"

# Extra commands from elsewhere in the project: name -> "module:attribute".
COMMANDS = {
    "token": "puqvpn.cli_token:token",
    "who-was-it": "puqvpn.services.connlog:who_command",
}


class Env:
    """Settings and database, loaded on first use."""

    def __init__(self, config=None):
        self.config = config
        self._settings = None
        self._db = None

    @property
    def settings(self):
        if self._settings is None:
            from flask import current_app, has_app_context
            if has_app_context() and "PUQVPN" in current_app.config:
                self._settings = current_app.config["PUQVPN"]
            else:
                from . import settings
                try:
                    self._settings = settings.load(self.config)
                except ValueError as e:
                    raise click.ClickException(str(e)) from None
        return self._settings

    @property
    def db(self):
        if self._db is None:
            from .db import connect
            self._db = connect(self.settings["DATABASE"])
        return self._db

    def context(self):
        from .services.system import Context
        return Context(self.db, self.settings)

    def close(self):
        if self._db is not None:
            self._db.conn.close()
            self._db = None


def default_config():
    """PUQVPN_CONFIG, else the installer's file if present, else the settings module's default."""
    if os.environ.get("PUQVPN_CONFIG"):
        return os.environ["PUQVPN_CONFIG"]
    if Path(INSTALLED_CONFIG).is_file():
        return INSTALLED_CONFIG
    return None


class LazyGroup(click.Group):
    """A click group that imports the commands in COMMANDS only when needed."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in COMMANDS:
            module, _, attribute = COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
        return command


pass_env = click.make_pass_decorator(Env)


@click.group("puqvpn", cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="FILE", default=default_config,
              help="Settings file (default: $PUQVPN_CONFIG, else /etc/puqvpn/puqvpn.conf).")
@click.pass_context
def cli(ctx, config):
    """Administer a puqvpn panel from the shell."""
    flask_info = _flask_script_info(ctx)
    if flask_info is not None:
        # Under `flask --app puqvpn puqvpn ...`: use that app's settings.
        ctx.with_resource(flask_info.load_app().app_context())
    env = Env(config)
    ctx.obj = env
    ctx.call_on_close(env.close)


def _flask_script_info(ctx):
    try:
        from flask.cli import ScriptInfo
    except ImportError:
        return None
    return ctx.find_object(ScriptInfo)


def audit(env, action, target="", outcome="ok", detail=""):
    from .services import audit as audit_log
    audit_log.record(env.db, "cli", "", action, target, outcome, detail)


def fail_validation(error):
    from .services.validation import ValidationError
    if isinstance(error, ValidationError):
        lines = [f"  {name}: {message}" for name, message in error.fields.items()]
        raise click.ClickException("refused:\n" + "\n".join(lines))
    raise error


# ---------------------------------------------------------------------- users

@cli.command("migrate")
@pass_env
def migrate_command(env):
    """Create the database or upgrade it to the latest schema (the installer runs this)."""
    from . import migrations
    from .db import connect
    db = connect(env.settings["DATABASE"], migrate=False)
    try:
        before = migrations.current_version(db.conn)
        applied = migrations.migrate(db.conn)
        after = migrations.current_version(db.conn)
    finally:
        db.conn.close()
    if applied:
        click.echo(f"Database {env.settings['DATABASE']} upgraded from schema {before} to {after}.")
    else:
        click.echo(f"Database {env.settings['DATABASE']} is at the latest schema ({after}).")


@cli.command("create-admin")
@click.argument("username")
@click.option("--password", envvar="PUQVPN_ADMIN_PASSWORD",
              help="Use this password instead of a generated one (or set PUQVPN_ADMIN_PASSWORD).")
@click.option("--role", type=click.Choice(["admin", "operator", "viewer"]), default="admin", show_default=True)
@click.option("--if-no-users", is_flag=True,
              help="Do nothing if any account exists (the installer's re-run).")
@pass_env
def create_admin(env, username, password, role, if_no_users):
    """Create a panel account; a generated password is printed once."""
    from .services import users
    from .services.validation import ValidationError

    count = env.db.execute("SELECT count(*) FROM users").fetchone()[0]
    if if_no_users and count:
        click.echo(f"{count} account(s) exist already; none created.")
        return
    try:
        _row, password_used = users.create_user(env.db, username, password, role=role)
    except ValidationError as e:
        fail_validation(e)
    audit(env, "user.create", username, detail=f"role={role}")
    click.echo(f"Created {role} {username}.")
    if password is None:
        click.echo(f"Password: {password_used}")
        click.echo("It is shown only this once.")


@cli.command("reset-password")
@click.argument("username")
@click.option("--password", help="Set this password instead of a generated one.")
@click.option("--disable-2fa", is_flag=True, help="Also turn off the account's two-factor login.")
@pass_env
def reset_password(env, username, password, disable_2fa):
    """Emergency: give an account a new password (printed) and end its sessions."""
    from .db import transaction
    from .services import users
    from .services.validation import ValidationError

    if not env.db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
        names = [row[0] for row in env.db.execute("SELECT username FROM users ORDER BY username")]
        raise click.ClickException(f"no account {username!r}" + (f"; accounts: {', '.join(names)}" if names
                                                                  else "; create one with create-admin"))
    try:
        new_password = users.set_password(env.db, username, password)  # also ends its sessions
    except ValidationError as e:
        fail_validation(e)
    if disable_2fa:
        with transaction(env.db):
            env.db.execute("UPDATE users SET totp_secret = NULL, recovery_codes = '[]' WHERE username = ?",
                           [username])
    audit(env, "user.reset_password", username, detail="2fa disabled" if disable_2fa else "")
    click.echo(f"Password of {username} reset" + (", two-factor login turned off." if disable_2fa else "."))
    if password is None:
        click.echo(f"Password: {new_password}")


# ----------------------------------------------------------------- the system

@cli.command("apply")
@pass_env
def apply_command(env):
    """Bring the live system in line with the database (reconcile)."""
    if not env.settings.bool("SYSTEM_APPLY"):
        click.echo("SYSTEM_APPLY is 0: the panel leaves the live system alone; nothing to do.")
        return
    from .services import apply
    from .services.system import CommandError

    try:
        apply.reconcile(env.context())
    except CommandError as e:
        raise click.ClickException(f"apply failed: {e}") from None
    pending = list(env.db.query("SELECT name, apply_error FROM interfaces WHERE apply_error IS NOT NULL"))
    for row in pending:
        click.echo(f"{row['name']}: {row['apply_error']}", err=True)
    if pending:
        raise click.ClickException(f"{len(pending)} interface(s) could not be applied")
    click.echo("The live system matches the database.")


@cli.command("teardown")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def teardown(env, yes):
    """Take the panel's tunnels and firewall table off the live system; the data stays.

    `install.sh --purge` runs this before it deletes the data; `puqvpn apply`
    brings everything back.
    """
    from .services import apply
    from .services.system import CommandError

    if not env.settings.bool("SYSTEM_APPLY"):
        click.echo("SYSTEM_APPLY is 0: the panel leaves the live system alone; nothing to do.")
        return
    names = [row["name"] for row in env.db.query("SELECT name FROM interfaces ORDER BY name")]
    if not yes:
        click.confirm(f"Take down {', '.join(names) or 'no interfaces'} and the firewall table? "
                      "Every client is disconnected", abort=True)
    ctx = env.context()
    failed = []
    for row in env.db.query("SELECT * FROM interfaces ORDER BY name"):
        try:
            apply.interface_removed(ctx, row)
            click.echo(f"{row['name']}: taken down")
        except CommandError as e:
            failed.append(f"{row['name']}: {e}")
    table = env.settings["NFT_TABLE"]
    result = ctx.runner.run([env.settings["NFT_BIN"], "delete", "table", "inet", table], check=False)
    if result.returncode == 0:
        click.echo(f"nftables table inet {table} removed")
    for line in failed:
        click.echo(line, err=True)
    if failed:
        raise click.ClickException(f"{len(failed)} interface(s) could not be taken down")


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
def status(env, as_json):
    """Schema, accounts, interfaces, clients and anything pending."""
    from . import migrations
    from .services import backup

    db, settings = env.db, env.settings
    interfaces = list(db.query("""
        SELECT i.name, i.listen_port, i.address, i.enabled, i.apply_error,
               count(c.id) AS clients, sum(c.suspended_reason IS NULL) AS active,
               sum(c.last_handshake > strftime('%s', 'now') - ?) AS online
        FROM interfaces i LEFT JOIN clients c ON c.interface_id = i.id
        GROUP BY i.id ORDER BY i.name""", [settings.int("ONLINE_TIMEOUT")]))
    backups = backup.list_backups(settings)
    info = {
        "config": settings.get("CONFIG_FILE"),
        "database": settings["DATABASE"],
        "schema_version": migrations.current_version(db.conn),
        "latest_schema_version": migrations.latest_version(),
        "accounts": db.execute("SELECT count(*) FROM users").fetchone()[0],
        "url": panel_url(settings),
        "interfaces": [{k: (v or 0) if k in ("clients", "active", "online") else v for k, v in row.items()}
                       for row in interfaces],
        "last_backup": backups[0]["name"] if backups else None,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Panel:     {info['url']}")
    click.echo(f"Settings:  {info['config']}")
    click.echo(f"Database:  {info['database']} (schema {info['schema_version']}"
               + ("" if info["schema_version"] == info["latest_schema_version"]
                  else f", latest {info['latest_schema_version']}: run any command to migrate") + ")")
    click.echo(f"Accounts:  {info['accounts']}")
    click.echo(f"Backups:   {len(backups)} in {settings['BACKUP_DIR']}"
               + (f", newest {backups[0]['name']}" if backups else ""))
    if not interfaces:
        click.echo("Interfaces: none")
    for row in info["interfaces"]:
        state = "enabled" if row["enabled"] else "disabled"
        click.echo(f"  {row['name']}: {row['address']} port {row['listen_port']}, {state}, "
                   f"{row['clients']} clients ({row['active']} active, {row['online']} online)")
        if row["apply_error"]:
            click.echo(f"    pending: {row['apply_error']}")


def panel_url(settings):
    if settings.get("PUBLIC_URL"):
        return settings["PUBLIC_URL"]
    scheme = "https" if settings.get("TLS_CERT") else "http"
    return f"{scheme}://{settings['HOST']}:{settings['PORT']}/"


# -------------------------------------------------------------------- backups

@cli.command("backup")
@click.option("-o", "--output", metavar="FILE",
              help="Where to write it ('-' for stdout); default ./puqvpn-backup-<time>.tar.gz.")
@click.option("--without-traffic", is_flag=True, help="Leave out the hourly and daily traffic history.")
@click.option("--scheduled", is_flag=True, help="Write into BACKUP_DIR and keep only the last BACKUP_KEEP.")
@pass_env
def backup_command(env, output, without_traffic, scheduled):
    """Write a backup: database (with keys and certificates) and session key."""
    from .services import backup

    if scheduled:
        path = backup.scheduled_backup(env.db, env.settings, with_traffic=not without_traffic)
        click.echo(f"Wrote {path} ({path.stat().st_size} bytes).")
        return
    if output == "-":
        if sys.stdout.isatty():
            raise click.ClickException("refusing to write a binary backup to a terminal; redirect it")
        backup.create_backup(env.db, env.settings, sys.stdout.buffer, with_traffic=not without_traffic)
        return
    if output is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        output = f"puqvpn-backup-{stamp}{'-notraffic' if without_traffic else ''}.tar.gz"
    old_umask = os.umask(0o077)  # the file holds private keys
    try:
        manifest = backup.create_backup(env.db, env.settings, output, with_traffic=not without_traffic)
    finally:
        os.umask(old_umask)
    size = Path(output).stat().st_size
    click.echo(f"Wrote {output} ({size} bytes, schema {manifest['schema_version']}"
               f"{', without traffic history' if without_traffic else ''}).")


@cli.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-apply", is_flag=True, help="Restore the data only; do not reconcile the live system.")
@pass_env
def restore_command(env, file, yes, no_apply):
    """Replace all data with a backup (checked first), then reconcile the system."""
    from .services import backup

    try:
        manifest = backup.validate(file)
    except backup.BackupError as e:
        raise click.ClickException(f"{file} refused, nothing changed: {e}") from None
    click.echo(f"{file}: puqvpn backup of {manifest['created_at']}, schema {manifest['schema_version']}, "
               f"{'with' if manifest['with_traffic'] else 'without'} traffic history.")
    if not yes:
        click.confirm("Replace ALL current data (accounts, interfaces, clients, keys) with it?", abort=True)
    try:
        result = backup.restore(env.db, env.settings, file, reconcile=not no_apply)
    except backup.BackupError as e:
        raise click.ClickException(f"{file} refused, nothing changed: {e}") from None
    audit(env, "backup.restore", Path(file).name, detail=f"created {manifest['created_at']}")
    if result["safety_copy"]:
        click.echo(f"The data as it was is saved in {result['safety_copy']}.")
    if result["migrated"]:
        click.echo(f"Upgraded the restored database (migrations {', '.join(map(str, result['migrated']))}).")
    if result["apply_error"]:
        raise click.ClickException(f"data restored, but applying it failed: {result['apply_error']}")
    click.echo("Restored." + ("" if no_apply else " The live system matches the backup."))


# --------------------------------------------------------------------- import

@cli.command("import-wg")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--endpoint", help="Host clients dial (default: the host of PUBLIC_URL).")
@click.option("--dry-run", is_flag=True, help="Show what would be imported and change nothing.")
@click.option("--no-apply", is_flag=True, help="Import into the database only.")
@pass_env
def import_wg(env, file, endpoint, dry_run, no_apply):
    """Take over an existing wg-quick server (e.g. /etc/wireguard/wg0.conf) without breaking its tunnels."""
    from .services import importer
    from .services.validation import ValidationError

    try:
        parsed = importer.parse_file(file)
    except importer.ConfigImportError as e:
        raise click.ClickException(f"{file} cannot be imported:\n" + "\n".join(f"  {p}" for p in e.problems))
    iface = parsed["interface"]
    click.echo(f"{iface['name']}: {iface['address']}{' ' + iface['address6'] if iface['address6'] else ''} "
               f"port {iface['listen_port']}, {len(parsed['peers'])} peer(s)")
    for note in parsed["notes"]:
        click.echo(f"  note: {note}")
    endpoint = endpoint or importer.endpoint_from_settings(env.settings)
    if dry_run:
        for peer in importer.plan_names(env.db, parsed):
            click.echo(f"  {peer['name']}: {peer['ip']}{' ' + peer['ip6'] if peer['ip6'] else ''}")
        click.echo("Dry run: nothing changed.")
        return
    if not endpoint:
        raise click.ClickException("give --endpoint HOST (the address clients dial), or set PUBLIC_URL")
    try:
        result = importer.import_parsed(env.db, parsed, endpoint=endpoint)
    except ValidationError as e:
        fail_validation(e)
    except importer.ConfigImportError as e:
        raise click.ClickException("\n".join(e.problems))
    audit(env, "interface.import", iface["name"], detail=f"{len(result['clients'])} peers from {file}")
    for client in result["clients"]:
        click.echo(f"  {client['name']}: {client['ip']}")
    click.echo(f"Imported {iface['name']} with {len(result['clients'])} client(s). Their profiles cannot be "
               "rebuilt (the server never had their private keys); the tunnels keep working.")
    if no_apply or not env.settings.bool("SYSTEM_APPLY"):
        return
    saved = importer.keep_original(file)
    if saved:
        click.echo(f"The original file is kept as {saved}.")
    error = importer.take_over(env.context(), result["interface"]["id"])
    if error:
        raise click.ClickException(f"imported, but applying failed (retry with `puqvpn apply`): {error}")
    click.echo(f"{iface['name']} is now managed by the panel. If wg-quick@{iface['name']} is enabled at boot, "
               f"disable it: systemctl disable wg-quick@{iface['name']}")


def register(app):
    """Make the same commands available as `flask --app puqvpn puqvpn ...`."""
    app.cli.add_command(cli)


def main(argv=None):
    return cli.main(args=argv, prog_name="puqvpn")


if __name__ == "__main__":
    main()

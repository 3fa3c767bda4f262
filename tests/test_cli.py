"""The admin's command line, run as an admin would: `puqvpn <command>` with a settings file."""

import json
import re

import pytest
from click.testing import CliRunner

from puqvpn import cli, settings as settings_module
from puqvpn.db import connect
from puqvpn.services import keys, users


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "puqvpn.conf"
    path.write_text(f"INSTANCE_DIR = {tmp_path / 'data'}\nSYSTEM_APPLY = 0\n"
                    "PUBLIC_URL = https://vpn.example.com:8443\n")
    return path


@pytest.fixture
def run(config):
    def run(*args, input=None):
        return CliRunner().invoke(cli.cli, ["--config", str(config), *args], input=input,
                                  catch_exceptions=False)
    return run


@pytest.fixture
def db(config):
    db = connect(settings_module.load(str(config), environ={})["DATABASE"])
    yield db
    db.conn.close()


def printed_password(output):
    return re.search(r"^Password: (\S+)$", output, re.M).group(1)


def test_create_admin_prints_a_generated_password_once(run, db):
    result = run("create-admin", "alice")
    assert result.exit_code == 0, result.output
    password = printed_password(result.output)
    assert users.verify(db, "alice", password)
    assert users.get(db, "alice")["role"] == "admin"
    assert [tuple(r) for r in db.execute("SELECT actor, action, target FROM audit_log")] == [("cli", "user.create", "alice")]


def test_create_admin_with_a_given_password_does_not_echo_it(run, db):
    result = run("create-admin", "bob", "--password", "a-long-passphrase", "--role", "viewer")
    assert result.exit_code == 0
    assert "a-long-passphrase" not in result.output
    assert users.verify(db, "bob", "a-long-passphrase")["role"] == "viewer"


def test_the_installers_rerun_keeps_the_existing_accounts(run, db):
    first = printed_password(run("create-admin", "admin", "--if-no-users").output)
    again = run("create-admin", "admin", "--if-no-users")
    assert again.exit_code == 0
    assert "1 account(s) exist already; none created." in again.output
    assert users.verify(db, "admin", first)


def test_a_refused_username_says_why(run):
    result = run("create-admin", "bad name")
    assert result.exit_code == 1
    assert "username: a username may only contain" in result.output


def test_reset_password_prints_a_new_one_and_ends_sessions(run, db):
    old = printed_password(run("create-admin", "alice").output)
    version = users.get(db, "alice")["session_version"]
    result = run("reset-password", "alice")
    assert result.exit_code == 0
    new = printed_password(result.output)
    assert new != old
    assert users.verify(db, "alice", new) and not users.verify(db, "alice", old)
    assert users.get(db, "alice")["session_version"] > version


def test_reset_password_can_turn_off_a_lost_second_factor(run, db):
    run("create-admin", "alice")
    db.execute("UPDATE users SET totp_secret = 'JBSWY3DPEHPK3PXP' WHERE username = 'alice'")
    assert run("reset-password", "alice", "--disable-2fa").exit_code == 0
    assert users.get(db, "alice")["totp_secret"] is None


def test_reset_password_of_an_unknown_account_lists_the_real_ones(run):
    run("create-admin", "alice")
    result = run("reset-password", "alicia")
    assert result.exit_code == 1
    assert "no account 'alicia'; accounts: alice" in result.output


def wg0_conf(server_private, peers):
    peer_text = "".join(f"\n# {name}\n[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.5.0.{n + 2}/32\n"
                        for n, (name, pub) in enumerate(peers))
    return f"[Interface]\nAddress = 10.5.0.1/24\nListenPort = 51820\nPrivateKey = {server_private}\n{peer_text}"


def test_import_wg_dry_run_then_for_real(run, db, tmp_path):
    conf = tmp_path / "wg0.conf"
    conf.write_text(wg0_conf(keys.generate_private_key(), [("ann", keys.generate_keypair()[1]),
                                                           ("ben", keys.generate_keypair()[1])]))
    dry = run("import-wg", str(conf), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "wg0: 10.5.0.1/24 port 51820, 2 peer(s)" in dry.output
    assert "  ann: 10.5.0.2" in dry.output and "Dry run: nothing changed." in dry.output
    assert db.execute("SELECT count(*) FROM interfaces").fetchone()[0] == 0

    real = run("import-wg", str(conf))
    assert real.exit_code == 0, real.output
    assert "Imported wg0 with 2 client(s)" in real.output
    rows = [tuple(r) for r in db.execute("SELECT clients.name, i.endpoint FROM clients "
                                         "JOIN interfaces i ON i.id = interface_id ORDER BY ip_int")]
    assert rows == [("ann", "vpn.example.com"), ("ben", "vpn.example.com")]  # endpoint from PUBLIC_URL


def test_import_wg_lists_every_problem_of_a_bad_file(run, tmp_path):
    conf = tmp_path / "wg1.conf"
    conf.write_text("[Interface]\nAddress = 10.6.0.1/24\nPrivateKey = nope\n")
    result = run("import-wg", str(conf))
    assert result.exit_code == 1
    assert "wg1.conf:3: PrivateKey: a WireGuard key is 32 bytes" in result.output
    assert "has no ListenPort" in result.output
    assert "has no PrivateKey" not in result.output


def test_backup_and_restore_through_the_cli(run, db, tmp_path):
    run("create-admin", "alice", "--password", "first-password")
    out = tmp_path / "b.tar.gz"
    result = run("backup", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o077 == 0
    run("reset-password", "alice", "--password", "second-password")

    # Without --yes it asks, and "n" leaves everything alone.
    declined = run("restore", str(out), input="n\n")
    assert declined.exit_code == 1 and users.verify(db, "alice", "second-password")
    restored = run("restore", str(out), "--yes")
    assert restored.exit_code == 0, restored.output
    assert "The data as it was is saved in" in restored.output
    assert users.verify(db, "alice", "first-password")


def test_restore_refuses_a_foreign_file_and_changes_nothing(run, db, tmp_path):
    run("create-admin", "alice", "--password", "first-password")
    foreign = tmp_path / "export.tar.gz"
    foreign.write_bytes(b"\x1f\x8b not really")
    result = run("restore", str(foreign), "--yes")
    assert result.exit_code == 1
    assert "refused, nothing changed" in result.output
    assert users.verify(db, "alice", "first-password")


def test_status_reports_schema_accounts_and_interfaces(run, tmp_path):
    run("create-admin", "alice")
    conf = tmp_path / "wg0.conf"
    conf.write_text(wg0_conf(keys.generate_private_key(), [("ann", keys.generate_keypair()[1])]))
    run("import-wg", str(conf))
    info = json.loads(run("status", "--json").output)
    assert info["accounts"] == 1
    assert info["schema_version"] == info["latest_schema_version"]
    assert info["url"] == "https://vpn.example.com:8443"
    assert [(i["name"], i["clients"], i["active"]) for i in info["interfaces"]] == [("wg0", 1, 1)]
    text = run("status").output
    assert "wg0: 10.5.0.1/24 port 51820, enabled, 1 clients (1 active, 0 online)" in text


def test_apply_says_so_when_the_panel_keeps_off_the_system(run):
    result = run("apply")
    assert result.exit_code == 0
    assert "SYSTEM_APPLY is 0" in result.output


def test_the_same_commands_under_flask(config, tmp_path):
    from puqvpn import create_app
    app = create_app(settings_module.load(str(config), environ={}))
    result = app.test_cli_runner().invoke(args=["puqvpn", "create-admin", "carol"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        from puqvpn.db import get_db
        assert users.verify(get_db(), "carol", printed_password(result.output))


def test_backup_to_stdout_for_piping_elsewhere(run, tmp_path):
    from puqvpn.services import backup
    run("create-admin", "alice")
    result = run("backup", "-o", "-", "--without-traffic")
    assert result.exit_code == 0
    copy = tmp_path / "piped.tar.gz"
    copy.write_bytes(result.stdout_bytes)
    assert backup.validate(copy)["with_traffic"] is False

import os

from puqvpn import create_app, settings


def test_the_factory_uses_the_given_settings(app, tmp_path):
    assert app.config["PUQVPN"]["INSTANCE_DIR"] == str(tmp_path / "instance")
    assert app.config["PUQVPN"]["DATABASE"] == str(tmp_path / "instance" / "puqvpn.sqlite3")


def test_the_instance_folder_and_secret_key_are_private(app, tmp_path):
    instance = tmp_path / "instance"
    assert oct(instance.stat().st_mode & 0o777) == "0o700"
    assert oct((instance / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert oct((instance / "puqvpn.sqlite3").stat().st_mode & 0o777) == "0o600"


def test_the_secret_key_survives_a_restart(tmp_path):
    first = create_app(INSTANCE_DIR=str(tmp_path))
    second = create_app(INSTANCE_DIR=str(tmp_path))
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]


def test_environment_overrides_the_settings_file(tmp_path):
    config = tmp_path / "puqvpn.conf"
    config.write_text("# comment\nPORT = 9000\nHOST = 0.0.0.0\n")
    loaded = settings.load(str(config), environ={"PUQVPN_PORT": "9100"})
    assert loaded["PORT"] == "9100"
    assert loaded["HOST"] == "0.0.0.0"


def test_an_unknown_setting_in_the_file_is_an_error(tmp_path):
    config = tmp_path / "puqvpn.conf"
    config.write_text("PROT = 9000\n")
    try:
        settings.load(str(config), environ={})
    except ValueError as error:
        assert "PROT" in str(error)
    else:
        raise AssertionError("a misspelt setting must not pass silently")


def test_the_readme_lists_every_setting():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    missing = [name for name in settings.SETTINGS if f"PUQVPN_{name}" not in readme]
    assert missing == []


def test_every_response_carries_the_security_headers(client):
    response = client.get("/auth/login")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"   # flask-wtf needs the Referer over HTTPS

"""The Backups page: download, restore an upload, scheduled files; admins only."""

import io
import tarfile

from puqvpn.services import backup, clients, users


def download(logged_in, traffic):
    response = logged_in.post("/backups/download", {"traffic": "1" if traffic else "0"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/gzip"
    assert "attachment; filename=puqvpn-backup-" in response.headers["Content-Disposition"]
    return response.data


def test_a_downloaded_backup_restores_through_the_upload_form(logged_in, client, make_client, db):
    make_client("alice")
    make_client("bob")
    data = download(logged_in, traffic=True)
    assert backup.validate(io.BytesIO(data))["with_traffic"] is True
    clients.delete(db, clients.get(db, "bob")["id"])

    response = logged_in.post("/backups/restore", {"file": (io.BytesIO(data), "mine.tar.gz"), "confirm": "1"},
                              content_type="multipart/form-data")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert [c["name"] for c in db.query("SELECT name FROM clients ORDER BY name")] == ["alice", "bob"]
    entry = next(db.query("SELECT action, target, outcome FROM audit_log WHERE action LIKE 'backups.restore%'"))
    assert (entry["target"], entry["outcome"]) == ("mine.tar.gz", "ok")


def test_the_lean_download_has_no_traffic_history(logged_in):
    data = download(logged_in, traffic=False)
    assert backup.validate(io.BytesIO(data))["with_traffic"] is False


def test_a_foreign_upload_is_refused_on_the_page_and_nothing_changes(logged_in, make_client, db):
    make_client("alice")
    foreign = io.BytesIO()
    with tarfile.open(fileobj=foreign, mode="w:gz") as tar:
        info = tarfile.TarInfo("wg0.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    response = logged_in.post("/backups/restore", {"file": (io.BytesIO(foreign.getvalue()), "wg-easy.tar.gz"),
                                                   "confirm": "1"}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert b"Refused, nothing was changed: not a puqvpn backup: unexpected entry" in response.data
    assert [c["name"] for c in db.query("SELECT name FROM clients")] == ["alice"]


def test_restore_needs_the_confirmation_box(logged_in, make_client):
    make_client("alice")
    data = download(logged_in, traffic=True)
    response = logged_in.post("/backups/restore", {"file": (io.BytesIO(data), "b.tar.gz")},
                              content_type="multipart/form-data")
    assert response.status_code == 422
    assert b"tick the box" in response.data


def test_scheduled_backups_are_listed_and_downloadable_by_name_only(logged_in, client, app):
    assert logged_in.post("/backups/now").status_code == 302
    listed = backup.list_backups(app.config["PUQVPN"])
    assert len(listed) == 1
    page = client.get("/backups/").get_data(as_text=True)
    assert listed[0]["name"] in page
    response = client.get(f"/backups/files/{listed[0]['name']}")
    assert response.status_code == 200 and backup.validate(io.BytesIO(response.data))
    assert client.get("/backups/files/..%2Fpuqvpn.sqlite3").status_code == 404
    assert client.get("/backups/files/secret_key").status_code == 404


def test_operators_cannot_reach_backups(auth, client, db):
    users.create_user(db, "op", "operator-password", role="operator")
    auth.attempt("op", "operator-password")
    assert client.get("/backups/").status_code == 403
    assert auth.post("/backups/download", {"traffic": "1"}).status_code == 403


def test_the_restore_form_accepts_backups_larger_than_the_app_wide_upload_limit(logged_in, app, make_client):
    make_client("alice")
    data = download(logged_in, traffic=True)
    app.config["MAX_CONTENT_LENGTH"] = len(data) // 2    # smaller than this backup
    response = logged_in.post("/backups/restore", {"file": (io.BytesIO(data), "big.tar.gz"), "confirm": "1"},
                              content_type="multipart/form-data")
    assert response.status_code == 302
    # Other forms keep the app-wide limit.
    too_big = logged_in.post("/backups/now", {"padding": "x" * len(data)})
    assert too_big.status_code == 413

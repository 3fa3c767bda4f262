"""Backups in the browser: download one now, restore an uploaded one, list the scheduled ones.

Everything here is admin only: a backup holds every private key.
"""

import tempfile
from datetime import datetime, timezone

from flask import Blueprint, abort, flash, redirect, request, send_file, url_for

from ..db import get_db
from ..services import backup
from ._common import render, settings
from .audit import note
from .auth import role

bp = Blueprint("backups", __name__, url_prefix="/backups")
UPLOAD_LIMIT = 1 << 30


def init_app(app):
    # A year of traffic history for thousands of clients is larger than the
    # app-wide upload limit; the restore form may send up to waitress's 1 GiB.
    # This must run before the CSRF check, which is what parses the body.
    def allow_large_restore():
        if request.endpoint == "backups.restore":
            request.max_content_length = UPLOAD_LIMIT
    app.before_request_funcs.setdefault(None, []).insert(0, allow_large_restore)


def _page(errors=None, status=200):
    return render("backups/index.html", status=status, backups=backup.list_backups(settings()),
                  settings=settings(), errors=errors or {})


@bp.route("/")
@role("admin")
def index():
    return _page()


@bp.route("/download", methods=["POST"])
@role("admin")
def download():
    with_traffic = request.form.get("traffic", "1") == "1"
    # An unnamed temporary file: gone as soon as it has been sent.
    handle = tempfile.TemporaryFile(prefix="puqvpn-backup-")
    manifest = backup.create_backup(get_db(), settings(), handle, with_traffic=with_traffic)
    handle.seek(0)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"puqvpn-backup-{stamp}{'' if with_traffic else '-notraffic'}.tar.gz"
    note(detail=f"{'with' if with_traffic else 'without'} traffic history, schema {manifest['schema_version']}")
    return send_file(handle, mimetype="application/gzip", as_attachment=True, download_name=name,
                     max_age=0)


@bp.route("/files/<name>")
@role("admin")
def file(name):
    path = backup.backup_path(settings(), name)   # only a file listed in BACKUP_DIR
    if path is None:
        abort(404)
    return send_file(path, mimetype="application/gzip", as_attachment=True, download_name=name, max_age=0)


@bp.route("/now", methods=["POST"])
@role("admin")
def now():
    path = backup.scheduled_backup(get_db(), settings())
    note(target=path.name)
    flash(f"Backup {path.name} written to {path.parent}.", "success")
    return redirect(url_for("backups.index"))


@bp.route("/restore", methods=["POST"])
@role("admin")
def restore():
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _page({"file": "choose a backup file"}, status=422)
    if request.form.get("confirm") != "1":
        return _page({"confirm": "tick the box to confirm that all current data is replaced"}, status=422)
    note(target=upload.filename[:100])
    with tempfile.TemporaryFile(prefix="puqvpn-restore-") as staged:
        upload.save(staged)
        staged.seek(0)
        try:
            result = backup.restore(get_db(), settings(), staged)
        except backup.BackupError as error:
            note(detail=str(error), outcome="failed")
            return _page({"file": f"Refused, nothing was changed: {error}"}, status=422)
    manifest = result["manifest"]
    message = f"Restored the backup of {manifest['created_at']}."
    if result["safety_copy"]:
        message += f" The data as it was is saved as {result['safety_copy']}."
    if result["apply_error"]:
        flash(f"{message} Applying it to the system failed: {result['apply_error']}. "
              "It is marked pending and will be retried.", "error")
    else:
        flash(message + " The live system matches it.", "success")
    # The accounts are those of the backup now: sign in again with them.
    return redirect(url_for("auth.login"))

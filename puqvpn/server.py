"""Serving the app: waitress, the start-up reconcile, and the background jobs."""

import logging

from waitress import serve as waitress_serve

log = logging.getLogger("puqvpn")


def startup(app):
    """Bring the live system in line with the database, then start the background jobs."""
    settings = app.config["PUQVPN"]
    if settings.bool("SYSTEM_APPLY"):
        from .db import connect
        from .services import apply
        from .services.system import Context
        db = connect(settings["DATABASE"])
        try:
            report = apply.reconcile(Context(db, settings))
            log.info("start-up reconcile: %s", report)
        except Exception as error:   # the panel still serves, showing what is pending
            log.error("start-up reconcile failed: %s", error)
        finally:
            db.conn.close()
    if settings.bool("BACKGROUND_JOBS"):
        try:
            from . import jobs
        except ModuleNotFoundError:
            return
        jobs.start(app)


def serve(app):
    settings = app.config["PUQVPN"]
    startup(app)
    host, port, threads = settings["HOST"], settings.int("PORT"), settings.int("THREADS")
    if settings["TLS_CERT"]:
        from .tls import serve_tls
        serve_tls(app, host, port, settings["TLS_CERT"], settings["TLS_KEY"], threads)
        return
    log.info("puqvpn listening on http://%s:%s", host, port)
    waitress_serve(app, host=host, port=port, threads=threads, ident="puqvpn")

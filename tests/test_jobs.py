"""Background jobs: a failing job is recorded and shown, and never stops the others."""

from puqvpn import jobs
from puqvpn.views import status_panels


def test_a_failing_job_is_recorded_and_the_next_job_still_runs(app, monkeypatch):
    settings = app.config["PUQVPN"]
    calls = []

    def broken(ctx):
        raise RuntimeError("charon is not answering")

    def healthy(ctx):
        calls.append(ctx.db.execute("SELECT count(*) FROM clients").fetchone()[0])
        return "ok"

    first = jobs.Job("broken", "x", "y", 1)
    second = jobs.Job("healthy", "x", "y", 1)
    monkeypatch.setattr(first, "target", lambda: broken)
    monkeypatch.setattr(second, "target", lambda: healthy)

    assert jobs.run_once(first, settings) is None
    assert jobs.run_once(second, settings) == "ok"
    assert first.failures == 1 and "charon is not answering" in first.last_error
    assert second.last_error == "" and calls == [0]

    monkeypatch.setattr(jobs, "JOBS", [first, second])
    panel = jobs.status_panel(None)
    assert panel["state"] == "down" and "broken: RuntimeError: charon is not answering" in panel["detail"]


def test_the_dashboard_shows_a_failing_job(app, logged_in, monkeypatch):
    failing = jobs.Job("traffic and status poll", "accounting", "poll", 30, runs=3, failures=1,
                       last_error="CommandError: `wg show wg0 dump` failed")
    monkeypatch.setattr(jobs, "JOBS", [failing])
    page = logged_in.client.get("/").get_data(as_text=True)
    assert "Background jobs" in page and "wg show wg0 dump" in page


def test_a_panel_that_raises_shows_as_down_instead_of_breaking_the_dashboard(monkeypatch):
    def explode(ctx):
        raise OSError("socket gone")
    monkeypatch.setattr(jobs, "status_panel", explode)
    panels = status_panels.collect(None)
    assert {"title": "Background jobs", "state": "down", "detail": "OSError: socket gone"} in panels

"""System status for the dashboard, gathered from whichever backends are installed.

Each entry is (title, state, detail) where state is ok, warn or down.
A backend that fails to report shows as down with its error, never as a crash.
"""

from importlib import import_module

# (service module, function returning {"state", "detail"}), shown in this order.
SOURCES = (
    ("WireGuard", "puqvpn.services.wireguard", "status_panel"),
    ("Firewall", "puqvpn.services.firewall", "status_panel"),
    ("IKEv2 (strongSwan)", "puqvpn.services.strongswan", "status_panel"),
    ("Background jobs", "puqvpn.jobs", "status_panel"),
    ("DNS resolver", "puqvpn.services.resolver", "status_panel"),
    ("Connection log", "puqvpn.services.connlog", "status_panel"),
)


def collect(ctx):
    panels = []
    for title, module_name, function in SOURCES:
        try:
            module = import_module(module_name)
        except ModuleNotFoundError:
            continue
        report = getattr(module, function, None)
        if report is None:
            continue
        try:
            result = report(ctx)
        except Exception as error:  # a broken backend must not take the dashboard down
            result = {"state": "down", "detail": f"{type(error).__name__}: {error}"}
        if result:
            panels.append({"title": title, **result})
    return panels

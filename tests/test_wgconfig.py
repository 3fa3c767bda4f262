"""Rendered WireGuard configs: what the server applies and what the apps import."""

import subprocess

import pytest

from puqvpn.services import clients, interfaces, keys, wgconfig
from tests.netns import Netns, requires_root_tools, unique_name


def test_the_server_config_lists_active_clients_only(db, wg0, make_client):
    alice = make_client("alice")
    bob = make_client("bob")
    clients.suspend(db, bob["id"])
    text = wgconfig.render_server_config(interfaces.get(db, wg0["id"]), clients.for_interface(db, wg0["id"]))
    assert "Address = 10.8.0.1/24" in text and "ListenPort = 51820" in text and "MTU = 1420" in text
    assert f"PublicKey = {alice['public_key']}" in text and "AllowedIPs = 10.8.0.2/32" in text
    assert bob["public_key"] not in text


def test_the_setconf_text_has_no_wg_quick_keys(db, wg0, make_client):
    make_client("alice")
    text = wgconfig.render_setconf(wg0, clients.for_interface(db, wg0["id"]))
    assert "Address" not in text and "MTU" not in text and "PrivateKey" in text


def test_the_client_config_is_what_the_apps_expect(db, wg0, make_client):
    alice = make_client("alice")
    text = wgconfig.render_client_config(wg0, alice)
    assert text.splitlines()[:3] == ["[Interface]", f"PrivateKey = {alice['private_key']}", "Address = 10.8.0.2/32"]
    assert "DNS = 1.1.1.1" in text and f"PublicKey = {wg0['public_key']}" in text
    assert f"PresharedKey = {alice['preshared_key']}" in text
    assert "Endpoint = vpn.example.com:51820" in text and "PersistentKeepalive = 25" in text
    assert keys.public_key(alice["private_key"]) == alice["public_key"]


def test_an_ipv6_endpoint_is_bracketed(db, wg0, make_client):
    interfaces.update(db, wg0["id"], {"endpoint": "2001:db8::7"})
    text = wgconfig.render_client_config(interfaces.get(db, wg0["id"]), make_client("alice"))
    assert "Endpoint = [2001:db8::7]:51820" in text


def test_a_value_with_a_newline_is_refused_even_if_it_got_past_validation(wg0):
    forged = dict(wg0, dns="1.1.1.1\nPostUp = touch /tmp/owned")
    with pytest.raises(ValueError):
        wgconfig.render_client_config(forged, {"private_key": keys.generate_private_key(), "ip": "10.8.0.2",
                                               "name": "x", "public_key": "y"})


def test_an_imported_client_has_no_rebuildable_profile(wg0):
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        wgconfig.render_client_config(wg0, {"private_key": None, "ip": "10.8.0.2"})


@requires_root_tools("wg", "wg-quick", "wireguard-go", "ip")
def test_wg_tools_accept_the_rendered_configs(db, wg0, make_client, tmp_path):
    """wg-quick strip reads the client and server files; wg setconf loads the server on wireguard-go."""
    make_client("alice")
    alice = make_client("bob", ip="10.8.0.50")
    server = wgconfig.render_server_config(wg0, clients.for_interface(db, wg0["id"]))
    client_conf = wgconfig.render_client_config(wg0, alice)
    for name, text in (("wgsrv", server), ("wgcli", client_conf)):
        path = tmp_path / f"{name}.conf"
        path.write_text(text)
        stripped = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True)
        assert stripped.returncode == 0, stripped.stderr
        assert "Address" not in stripped.stdout and "[Peer]" in stripped.stdout

    ifname = unique_name("wgc")
    with Netns("pqc") as ns:
        ns.run(["wireguard-go", ifname], timeout=10)
        setconf = tmp_path / "setconf.conf"
        setconf.write_text(wgconfig.render_setconf(wg0, clients.for_interface(db, wg0["id"])))
        ns.run(["wg", "setconf", ifname, str(setconf)])
        dump = ns.run(["wg", "show", ifname, "dump"]).stdout.splitlines()
        assert dump[0].split("\t")[2] == "51820"
        assert {line.split("\t")[3] for line in dump[1:]} == {"10.8.0.2/32", "10.8.0.50/32"}

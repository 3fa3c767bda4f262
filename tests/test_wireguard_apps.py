"""The client profile as the official WireGuard apps take it: the downloaded .conf and its QR code.

wg-quick's own parser stands in for the apps' importers: it reads the tunnel
name from the file name and rejects any key it does not know.
"""

import re
import shutil
import subprocess

import pytest

from puqvpn.services import clients, interfaces
from puqvpn.views.clients import qr_svg

# The apps name the tunnel after the file: wg-quick and the Android app accept exactly this.
TUNNEL_FILE = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}\.conf")

needs_wg_quick = pytest.mark.skipif(shutil.which("wg-quick") is None, reason="wg-quick is not installed")
needs_zbarimg = pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbarimg (zbar-tools) is not installed")


@pytest.fixture
def dual_stack(db):
    return interfaces.create(db, {"name": "wg7", "address": "10.77.0.1/24", "address6": "fd77:7::1/64",
                                  "listen_port": "51877", "endpoint": "2001:db8::7", "dns": "10.77.0.1, fd77:7::1",
                                  "mtu": "1380", "keepalive": "0", "allowed_ips": "10.77.0.0/24, fd77:7::/64"})


def download(client, client_id):
    response = client.get(f"/clients/{client_id}/wireguard.conf")
    assert response.status_code == 200
    filename = re.fullmatch(r'attachment; filename="([^"]+)"', response.headers["Content-Disposition"]).group(1)
    return filename, response.get_data(as_text=True)


def wg_quick_strip(path):
    result = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_wg_quick
@pytest.mark.parametrize("name", ["alice", "bob@example.org-laptop", "x"])
def test_wg_quick_reads_the_downloaded_conf_under_its_own_file_name(logged_in, client, make_client, name,
                                                                    tmp_path):
    row = make_client(name)
    filename, text = download(client, row["id"])
    assert TUNNEL_FILE.fullmatch(filename), filename
    path = tmp_path / filename
    path.write_text(text)
    stripped = wg_quick_strip(path)
    # strip keeps what `wg setconf` takes and drops wg-quick's own keys (Address, DNS, MTU).
    assert f"PrivateKey = {row['private_key']}" in stripped
    assert f"PresharedKey = {row['preshared_key']}" in stripped
    assert "Endpoint = vpn.example.com:51820" in stripped
    assert "PersistentKeepalive = 25" in stripped
    assert "Address" not in stripped and "DNS" not in stripped


@needs_wg_quick
def test_wg_quick_reads_a_dual_stack_profile_with_an_ipv6_endpoint(logged_in, client, db, dual_stack, tmp_path):
    row = clients.create(db, {"interface": dual_stack["id"], "name": "phone"})
    filename, text = download(client, row["id"])
    assert re.search(r"^Address = 10\.77\.0\.2/32, fd77:7::2/128$", text, re.M)
    assert re.search(r"^DNS = 10\.77\.0\.1, fd77:7::1$", text, re.M)
    assert re.search(r"^Endpoint = \[2001:db8::7\]:51877$", text, re.M)
    assert "PersistentKeepalive" not in text   # 0 means off: the line is left out
    path = tmp_path / filename
    path.write_text(text)
    assert "Endpoint = [2001:db8::7]:51877" in wg_quick_strip(path)


def test_the_qr_code_is_made_from_exactly_the_downloaded_file(logged_in, client, make_client):
    row = make_client("alice")
    _filename, text = download(client, row["id"])
    response = client.get(f"/clients/{row['id']}/wireguard.svg")
    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    assert response.data == qr_svg(text)


@needs_zbarimg
def test_a_scanner_reads_the_qr_code_back_as_the_file_byte_for_byte(logged_in, client, make_client, tmp_path):
    import segno

    row = make_client("bob@example.org-laptop", note="a long note does not go into the profile")
    _filename, text = download(client, row["id"])
    png = tmp_path / "qr.png"
    # The same symbol the SVG draws (same text, same settings), as pixels a scanner can read.
    segno.make(text, error="l", micro=False).save(str(png), scale=6, border=4)
    result = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sbinary", str(png)], capture_output=True,
                            timeout=30, check=True)
    assert result.stdout.decode().rstrip("\n") == text.rstrip("\n")

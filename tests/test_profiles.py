"""IKEv2 client profiles: each parses in its own format and agrees with the server's proposals."""

import base64
import configparser
import json
import plistlib
import uuid

import pytest

from puqvpn.db import connect
from puqvpn.services import clients, interfaces, pki, profiles, strongswan


@pytest.fixture
def db(tmp_path):
    database = connect(tmp_path / "panel.sqlite3")
    yield database
    database.conn.close()


@pytest.fixture
def rows(db):
    pki.generate_ca(db, "Example VPN CA", "Example", key_type="ecdsa-p256")
    pki.generate_server(db, "vpn.example.com", "203.0.113.7")
    interface = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                       "endpoint": "vpn.example.com", "label": "Bob's office",
                                       "ikev2_enabled": "1"})
    client = clients.create(db, {"interface": interface["id"], "name": "alice.phone"})
    return interface, client


def build(db, rows, kind, options=None):
    interface, client = rows
    return profiles.build(db, kind, interface, client, options or strongswan.get_options(db))


def test_sswan_has_the_keys_the_android_app_reads(db, rows):
    interface, client = rows
    filename, mime, data = build(db, rows, "sswan")
    assert filename == "alice.phone.sswan" and mime == "application/vnd.strongswan.profile"
    profile = json.loads(data)
    uuid.UUID(profile["uuid"])
    assert profile["type"] == "ikev2-eap"
    assert profile["name"] == "Bobs office alice.phone"
    assert profile["remote"]["addr"] == "vpn.example.com"
    assert profile["remote"]["id"] == "vpn.example.com"
    assert base64.b64decode(profile["remote"]["cert"]) == pki.to_der(pki.get(db, "ca")["cert_pem"])
    assert profile["local"]["eap_id"] == client["username"]
    options = strongswan.get_options(db)
    assert profile["ike-proposal"] in options["ike_proposals"]
    assert profile["esp-proposal"] in options["esp_proposals"]
    # the same client gets the same uuid, so importing again replaces the profile
    assert json.loads(build(db, rows, "sswan")[2])["uuid"] == profile["uuid"]


def test_mobileconfig_carries_the_ca_and_an_ikev2_eap_payload_matching_the_server(db, rows):
    interface, client = rows
    filename, mime, data = build(db, rows, "mobileconfig")
    assert filename == "alice.phone.mobileconfig" and mime == "application/x-apple-aspen-config"
    profile = plistlib.loads(data)
    assert profile["PayloadType"] == "Configuration"
    root, vpn = profile["PayloadContent"]
    assert root["PayloadType"] == "com.apple.security.root"
    assert root["PayloadContent"] == pki.to_der(pki.get(db, "ca")["cert_pem"])
    assert vpn["PayloadType"] == "com.apple.vpn.managed" and vpn["VPNType"] == "IKEv2"
    ike = vpn["IKEv2"]
    assert ike["AuthenticationMethod"] == "None"
    assert ike["ExtendedAuthEnabled"] == 1
    assert ike["AuthName"] == client["username"] and ike["AuthPassword"] == client["password"]
    assert ike["RemoteAddress"] == "vpn.example.com" and ike["RemoteIdentifier"] == "vpn.example.com"
    assert ike["ServerCertificateIssuerCommonName"] == "Example VPN CA"
    for payload in (profile, root, vpn):
        uuid.UUID(payload["PayloadUUID"])

    # the pinned parameters are exactly one of the server's proposals
    options = strongswan.get_options(db)
    sa, child = ike["IKESecurityAssociationParameters"], ike["ChildSecurityAssociationParameters"]
    assert (sa["EncryptionAlgorithm"], sa["IntegrityAlgorithm"], sa["DiffieHellmanGroup"]) == \
        ("AES-256-GCM", "SHA2-384", 20)
    assert "aes256gcm16-prfsha384-ecp384" in options["ike_proposals"]
    assert (child["EncryptionAlgorithm"], child["DiffieHellmanGroup"]) == ("AES-256-GCM", 20)
    assert "aes256gcm16-ecp384" in options["esp_proposals"] and ike["EnablePFS"] == 1


def test_mobileconfig_follows_changed_server_proposals(db, rows):
    options = strongswan.set_options(db, {"ike_proposals": "aes256-sha256-modp2048, aes256-sha1-modp1024",
                                          "esp_proposals": "aes256-sha256-modp2048, aes256-sha1"})
    ike = plistlib.loads(build(db, rows, "mobileconfig", options)[2])["PayloadContent"][1]["IKEv2"]
    assert ike["IKESecurityAssociationParameters"]["EncryptionAlgorithm"] == "AES-256"
    assert ike["IKESecurityAssociationParameters"]["DiffieHellmanGroup"] == 14
    assert ike["ChildSecurityAssociationParameters"]["DiffieHellmanGroup"] == 14


def test_a_platform_without_a_common_proposal_gets_a_clear_error(db, rows):
    options = strongswan.set_options(db, {"ike_proposals": "aes128-sha1-modp1024",
                                          "esp_proposals": "aes128-sha1"})
    with pytest.raises(profiles.ProfileError, match="iOS/macOS"):
        build(db, rows, "mobileconfig", options)


def test_windows_script_imports_the_ca_and_sets_matching_ciphers(db, rows):
    interface, client = rows
    filename, mime, data = build(db, rows, "windows")
    script = data.decode()
    assert filename == "alice.phone.ps1" and mime.startswith("text/plain")
    assert "Cert:\\LocalMachine\\Root" in script
    assert "Add-VpnConnection -Name $Name -ServerAddress $Server -TunnelType Ikev2" in script
    assert "-AuthenticationMethod Eap" in script and "New-EapConfiguration" in script
    # the first IKE proposal Windows can be set to: aes256gcm16-prfsha384-ecp384
    assert "-EncryptionMethod GCMAES256 -IntegrityCheckMethod SHA384 -DHGroup ECP384" in script
    assert "-CipherTransformConstants GCMAES256 -AuthenticationTransformConstants GCMAES256" in script
    assert "-PfsGroup ECP384" in script
    # the connection name keeps only plain characters; values are single-quoted literals
    assert "$Name = 'Bobs office alice.phone'" in script
    assert f"$User = '{client['username']}'" in script
    assert "rasdial $Name $User $Password" in script      # stores the credentials once
    assert pki.to_der(pki.get(db, "ca")["cert_pem"]) == base64.b64decode(
        script.split("FromBase64String('")[1].split("'")[0])


def test_powershell_quoting_doubles_single_quotes():
    assert profiles._ps_quote("it's $(evil)") == "'it''s $(evil)'"
    with pytest.raises(profiles.ProfileError):
        profiles._ps_quote("line\nbreak")


def test_networkmanager_keyfile_for_the_strongswan_plugin(db, rows):
    interface, client = rows
    filename, _mime, data = build(db, rows, "nmconnection")
    assert filename == "alice.phone.nmconnection"
    keyfile = configparser.ConfigParser(interpolation=None)
    keyfile.read_string(data.decode())
    assert keyfile["connection"]["type"] == "vpn"
    vpn = keyfile["vpn"]
    assert vpn["service-type"] == "org.freedesktop.NetworkManager.strongswan"
    assert vpn["method"] == "eap" and vpn["user"] == client["username"]
    assert vpn["address"] == "vpn.example.com" and vpn["remote-identity"] == "vpn.example.com"
    assert vpn["virtual"] == "yes" and vpn["proposal"] == "yes"
    assert vpn["ike"] in strongswan.get_options(db)["ike_proposals"]
    assert keyfile["vpn-secrets"]["password"] == client["password"]


def test_ca_downloads(db, rows):
    ca = pki.get(db, "ca")["cert_pem"]
    assert profiles.ca_pem_file(ca) == ("vpn-ca.pem", "application/x-pem-file", ca.encode())
    name, mime, der = profiles.ca_der_file(ca)
    assert name == "vpn-ca.crt" and mime == "application/x-x509-ca-cert" and der == pki.to_der(ca)


def test_no_profiles_without_certificates(db):
    interface = interfaces.create(db, {"name": "wg0", "address": "10.8.0.1/24", "listen_port": "51820",
                                       "endpoint": "vpn.example.com"})
    client = clients.create(db, {"interface": interface["id"], "name": "alice"})
    with pytest.raises(profiles.ProfileError, match="CA"):
        profiles.build(db, "sswan", interface, client, strongswan.get_options(db))
    with pytest.raises(profiles.ProfileError, match="unknown"):
        profiles.build(db, "exe", interface, client, strongswan.get_options(db))

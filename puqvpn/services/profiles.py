"""IKEv2 client profiles, one per platform, each as (filename, mime, bytes).

Every profile is built from the same inputs: the interface and client rows,
the CA certificate (PEM), the server identity (the server certificate's DNS
name) and the server's proposals (``strongswan.get_options``).  The
parameters a profile pins are the first server proposal that platform can
speak, so client and server always agree.
"""

import base64
import json
import plistlib
import re
import uuid

from . import pki

# IKE proposal -> the names Apple and Windows use for its parts.  Only the
# proposals listed here can be pinned in a profile.
_APPLE_IKE = {
    "aes256gcm16-prfsha384-ecp384": ("AES-256-GCM", "SHA2-384", 20),
    "aes256gcm16-prfsha256-ecp256": ("AES-256-GCM", "SHA2-256", 19),
    "aes256-sha256-ecp256": ("AES-256", "SHA2-256", 19),
    "aes256-sha384-ecp384": ("AES-256", "SHA2-384", 20),
    "aes256-sha256-modp2048": ("AES-256", "SHA2-256", 14),
    "aes128-sha256-modp2048": ("AES-128", "SHA2-256", 14),
}
_APPLE_ESP = {
    "aes256gcm16-ecp384": ("AES-256-GCM", "SHA2-384", 20),
    "aes256gcm16-ecp256": ("AES-256-GCM", "SHA2-256", 19),
    "aes256-sha256-ecp256": ("AES-256", "SHA2-256", 19),
    "aes256-sha256-modp2048": ("AES-256", "SHA2-256", 14),
    "aes128-sha256-modp2048": ("AES-128", "SHA2-256", 14),
}
# Set-VpnConnectionIPsecConfiguration: (EncryptionMethod, IntegrityCheckMethod, DHGroup)
_WINDOWS_IKE = {
    "aes256gcm16-prfsha384-ecp384": ("GCMAES256", "SHA384", "ECP384"),
    "aes256gcm16-prfsha256-ecp256": ("GCMAES256", "SHA256", "ECP256"),
    "aes256-sha256-ecp256": ("AES256", "SHA256", "ECP256"),
    "aes256-sha384-ecp384": ("AES256", "SHA384", "ECP384"),
    "aes256-sha256-modp2048": ("AES256", "SHA256", "Group14"),
    "aes128-sha256-modp2048": ("AES128", "SHA256", "Group14"),
    "aes256-sha1-modp1024": ("AES256", "SHA1", "Group2"),
}
# (CipherTransformConstants, AuthenticationTransformConstants, PfsGroup)
_WINDOWS_ESP = {
    "aes256gcm16-ecp384": ("GCMAES256", "GCMAES256", "ECP384"),
    "aes256gcm16-ecp256": ("GCMAES256", "GCMAES256", "ECP256"),
    "aes256gcm16": ("GCMAES256", "GCMAES256", "None"),
    "aes256-sha256": ("AES256", "SHA256128", "None"),
    "aes256-sha256-modp2048": ("AES256", "SHA256128", "PFS2048"),
    "aes256-sha1": ("AES256", "SHA196", "None"),
}

MIME_SSWAN = "application/vnd.strongswan.profile"
MIME_MOBILECONFIG = "application/x-apple-aspen-config"
MIME_PS1 = "text/plain; charset=utf-8"
MIME_NM = "text/plain; charset=utf-8"
MIME_PEM = "application/x-pem-file"
MIME_DER = "application/x-x509-ca-cert"

SAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]+")


class ProfileError(ValueError):
    """A profile cannot be made (no common proposal, missing certificate); the message says why."""


def _first(proposals, table, platform, kind):
    for proposal in proposals:
        if proposal in table:
            return proposal, table[proposal]
    raise ProfileError(f"none of the server's {kind} proposals can be set on {platform}; "
                       f"add one of {', '.join(table)} in the IKEv2 advanced settings")


def apple_parameters(options):
    """(ike proposal, esp proposal, IKESecurityAssociationParameters, ChildSecurityAssociationParameters)."""
    ike, (enc, integ, group) = _first(options["ike_proposals"], _APPLE_IKE, "iOS/macOS", "IKE")
    esp, (cenc, cinteg, cgroup) = _first(options["esp_proposals"], _APPLE_ESP, "iOS/macOS", "ESP")
    minutes = max(10, options["ike_rekey_time"] // 60) if options["ike_rekey_time"] else 1440
    child_minutes = max(10, options["child_rekey_time"] // 60) if options["child_rekey_time"] else 1440
    return ike, esp, {
        "EncryptionAlgorithm": enc, "IntegrityAlgorithm": integ, "DiffieHellmanGroup": group,
        "LifeTimeInMinutes": min(minutes, 1440),
    }, {
        "EncryptionAlgorithm": cenc, "IntegrityAlgorithm": cinteg, "DiffieHellmanGroup": cgroup,
        "LifeTimeInMinutes": min(child_minutes, 1440),
    }


def windows_parameters(options):
    ike, ike_values = _first(options["ike_proposals"], _WINDOWS_IKE, "Windows", "IKE")
    esp, esp_values = _first(options["esp_proposals"], _WINDOWS_ESP, "Windows", "ESP")
    return ike, esp, ike_values, esp_values


def _filename(client, extension):
    return f"{SAFE_FILENAME.sub('_', client['name']).strip('_') or 'client'}{extension}"


def _connection_name(interface, client):
    label = interface.get("label") or interface["name"]
    return re.sub(r"[^A-Za-z0-9 _.@-]+", "", f"{label} {client['name']}").strip()[:60] or "VPN"


def _uuid(namespace, *parts):
    """Stable per client, so re-importing a profile replaces the old one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "puqvpn:" + namespace + ":" + ":".join(map(str, parts))))


def _server_address(interface):
    return interface["endpoint"]


# ------------------------------------------------------------------ Android

def sswan(interface, client, ca_pem, identity, options):
    """The strongSwan app's profile (type ikev2-eap); the app asks for the password itself."""
    # the app takes one proposal of each kind: the server's first, which the app supports
    ike, esp = options["ike_proposals"][0], options["esp_proposals"][0]
    profile = {
        "uuid": _uuid("sswan", interface["id"], client["id"]),
        "name": _connection_name(interface, client),
        "type": "ikev2-eap",
        "remote": {
            "addr": _server_address(interface),
            "id": identity,
            "cert": base64.b64encode(pki.to_der(ca_pem)).decode(),
        },
        "local": {"eap_id": client["username"]},
        "ike-proposal": ike,
        "esp-proposal": esp,
    }
    data = json.dumps(profile, indent=2).encode()
    return _filename(client, ".sswan"), MIME_SSWAN, data


# ------------------------------------------------------------------ Apple

def mobileconfig(interface, client, ca_pem, identity, options):
    """An iOS/macOS configuration profile: the CA as a root payload plus the IKEv2 VPN payload."""
    _ike, _esp, ike_params, child_params = apple_parameters(options)
    ca_uuid = _uuid("mobileconfig-ca", interface["id"], client["id"])
    vpn_uuid = _uuid("mobileconfig-vpn", interface["id"], client["id"])
    name = _connection_name(interface, client)
    ca_info = pki.cert_info(ca_pem)
    ident = f"puqvpn.{re.sub(r'[^A-Za-z0-9.-]+', '-', identity)}.{client['id']}"
    vpn = {
        "PayloadType": "com.apple.vpn.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.vpn",
        "PayloadUUID": vpn_uuid,
        "PayloadDisplayName": name,
        "UserDefinedName": name,
        "VPNType": "IKEv2",
        "IKEv2": {
            "RemoteAddress": _server_address(interface),
            "RemoteIdentifier": identity,
            "LocalIdentifier": client["username"],
            "ServerCertificateIssuerCommonName": ca_info["common_name"],
            "ServerCertificateCommonName": identity,
            "AuthenticationMethod": "None",
            "ExtendedAuthEnabled": 1,
            "AuthName": client["username"],
            "AuthPassword": client["password"],
            "IKESecurityAssociationParameters": ike_params,
            "ChildSecurityAssociationParameters": child_params,
            "DeadPeerDetectionRate": "Medium",
            "EnablePFS": 1,
            "DisableMOBIKE": 0 if options["mobike"] else 1,
            "DisableRedirect": 0,
            "EnableCertificateRevocationCheck": 0,
            "UseConfigurationAttributeInternalIPSubnet": 0,
            "OnDemandEnabled": 0,
        },
    }
    ca_payload = {
        "PayloadType": "com.apple.security.root",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.ca",
        "PayloadUUID": ca_uuid,
        "PayloadDisplayName": ca_info["common_name"] or "VPN CA",
        "PayloadCertificateFileName": "ca.crt",
        "PayloadContent": pki.to_der(ca_pem),
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": _uuid("mobileconfig", interface["id"], client["id"]),
        "PayloadDisplayName": name,
        "PayloadDescription": f"IKEv2 VPN to {identity} for {client['username']}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [ca_payload, vpn],
    }
    return _filename(client, ".mobileconfig"), MIME_MOBILECONFIG, plistlib.dumps(profile)


# ------------------------------------------------------------------ Windows

def _ps_quote(value):
    """A PowerShell single-quoted literal: only ' needs doubling there."""
    value = str(value)
    if any(ord(c) < 32 for c in value):
        raise ProfileError("a value for the Windows script holds a control character")
    return "'" + value.replace("'", "''") + "'"


def windows_ps1(interface, client, ca_pem, identity, options):
    """A PowerShell script (run as administrator) that sets up the built-in IKEv2 client."""
    _ike, _esp, (enc, integ, dh), (cipher, auth, pfs) = windows_parameters(options)
    name = _connection_name(interface, client)
    ca_b64 = base64.b64encode(pki.to_der(ca_pem)).decode()
    lines = [
        "# IKEv2 VPN setup for Windows 10/11 (built-in client, EAP-MSCHAPv2).",
        "# Run in PowerShell as administrator:",
        "#   powershell -ExecutionPolicy Bypass -File .\\" + _filename(client, ".ps1"),
        "#",
        "# Windows asks for the password when the connection is first used, and may ask",
        "# twice (once for the network sign-in, once for the VPN). This script stores the",
        "# credentials with rasdial once, so later connects do not ask again.",
        "$ErrorActionPreference = 'Stop'",
        f"$Name = {_ps_quote(name)}",
        f"$Server = {_ps_quote(_server_address(interface))}",
        f"$User = {_ps_quote(client['username'])}",
        f"$Password = {_ps_quote(client['password'])}",
        f"$CaDer = [Convert]::FromBase64String({_ps_quote(ca_b64)})",
        "",
        "# 1. Trust the VPN's root CA for this machine",
        "$CaFile = Join-Path $env:TEMP 'puqvpn-ca.cer'",
        "[IO.File]::WriteAllBytes($CaFile, $CaDer)",
        "Import-Certificate -FilePath $CaFile -CertStoreLocation Cert:\\LocalMachine\\Root | Out-Null",
        "Remove-Item $CaFile",
        "",
        "# 2. The connection: IKEv2, EAP-MSCHAPv2, full tunnel",
        "if (Get-VpnConnection -Name $Name -AllUserConnection -ErrorAction SilentlyContinue) {",
        "    Remove-VpnConnection -Name $Name -AllUserConnection -Force",
        "}",
        "$Eap = New-EapConfiguration",
        "Add-VpnConnection -Name $Name -ServerAddress $Server -TunnelType Ikev2 `",
        "    -AuthenticationMethod Eap -EapConfigXmlStream $Eap.EapConfigXmlStream `",
        "    -EncryptionLevel Required -RememberCredential -AllUserConnection -Force",
        "",
        "# 3. The same ciphers the server offers (no registry edits needed)",
        "Set-VpnConnectionIPsecConfiguration -ConnectionName $Name -AllUserConnection `",
        f"    -EncryptionMethod {enc} -IntegrityCheckMethod {integ} -DHGroup {dh} `",
        f"    -CipherTransformConstants {cipher} -AuthenticationTransformConstants {auth} `",
        f"    -PfsGroup {pfs} -Force",
        "",
        "# 4. Store the credentials so Windows does not ask for them again",
        "rasdial $Name $User $Password | Out-Null",
        "rasdial $Name /disconnect | Out-Null",
        "Write-Host \"VPN connection '$Name' is ready.\"",
    ]
    return _filename(client, ".ps1"), MIME_PS1, ("\r\n".join(lines) + "\r\n").encode()


# ------------------------------------------------------------------ Linux

def _nm_value(value):
    """A keyfile value: one line, with the escapes GKeyFile reads."""
    value = str(value)
    if any(ord(c) < 32 for c in value):
        raise ProfileError("a value for NetworkManager holds a control character")
    return value.replace("\\", "\\\\")


def nmconnection(interface, client, ca_pem, identity, options, ca_path=None):
    """A NetworkManager keyfile for the strongSwan plugin (network-manager-strongswan).

    The CA travels in the same download as a separate file; ``ca_path`` is
    where the user puts it (default /etc/ssl/certs/<name>-ca.pem).
    """
    name = _connection_name(interface, client)
    ca_path = ca_path or f"/etc/ssl/certs/{_filename(client, '-vpn-ca.pem')}"
    ike = options["ike_proposals"][0]
    esp = options["esp_proposals"][0]
    lines = [
        "# Install: copy the CA to " + ca_path + ", this file to",
        "# /etc/NetworkManager/system-connections/ with mode 600, then: nmcli connection reload",
        "[connection]",
        f"id={_nm_value(name)}",
        f"uuid={_uuid('nm', interface['id'], client['id'])}",
        "type=vpn",
        "autoconnect=false",
        "",
        "[vpn]",
        f"address={_nm_value(_server_address(interface))}",
        f"certificate={_nm_value(ca_path)}",
        "encap=no",
        f"esp={_nm_value(esp)}",
        f"ike={_nm_value(ike)}",
        "ipcomp=no",
        "method=eap",
        "password-flags=0",
        "proposal=yes",
        f"remote-identity={_nm_value(identity)}",
        f"user={_nm_value(client['username'])}",
        "virtual=yes",
        "service-type=org.freedesktop.NetworkManager.strongswan",
        "",
        "[vpn-secrets]",
        f"password={_nm_value(client['password'])}",
        "",
        "[ipv4]",
        "method=auto",
        "",
        "[ipv6]",
        "method=auto",
        "",
    ]
    return _filename(client, ".nmconnection"), MIME_NM, "\n".join(lines).encode()


# ------------------------------------------------------------------ CA

def ca_pem_file(ca_pem):
    return "vpn-ca.pem", MIME_PEM, ca_pem.encode()


def ca_der_file(ca_pem):
    return "vpn-ca.crt", MIME_DER, pki.to_der(ca_pem)


FORMATS = {
    "sswan": sswan,
    "mobileconfig": mobileconfig,
    "windows": windows_ps1,
    "nmconnection": nmconnection,
}


def build(db, kind, interface, client, options):
    """One profile by name, from the database's certificates; ProfileError if IKEv2 is not ready."""
    if kind not in FORMATS:
        raise ProfileError(f"unknown profile type {kind!r}")
    ca = pki.get(db, "ca")
    identity = pki.server_identity(db)
    if ca is None or identity is None:
        raise ProfileError("IKEv2 needs the root CA and the server certificate first")
    return FORMATS[kind](interface, client, ca["cert_pem"], identity, options)

"""A small model of a host's ip, wg, wireguard-go, nft and sysctl, for FakeRunner tests.

It keeps just enough state (links, addresses, WireGuard peers, the panel's
nftables table, sysctls) for the apply layer to converge against it, and
answers with the same exit codes and error text the real tools print.
Failures are scripted by adding longer argv prefixes to ``runner.responses``.
"""

import json
import re

from puqvpn.services.system import FakeRunner, Result


def fail(stderr, code=1, stdout=""):
    return Result(code, stdout, stderr)


class FakeSystem:
    def __init__(self, kernel=False, default_dev="eth0"):
        self.kernel = kernel
        self.default_dev = {4: default_dev, 6: default_dev}
        self.links = {}      # name -> {"kind", "mtu", "up", "addrs"}
        self.wg = {}         # name -> {"private_key", "port", "peers": {pub: {...}}}
        self.sysctl = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
                       f"net.ipv6.conf.{default_dev}.accept_ra": "1"}
        self.tables = {}     # name -> {"hash", "text", "sets": {set name: set()}}
        self.runner = FakeRunner(responses={(): self.handle})

    # ------------------------------------------------------------------ dispatch
    def handle(self, argv, input):
        tool = argv[0]
        if tool == "ip":
            return self.ip(argv[1:])
        if tool == "wireguard-go":
            return self.create(argv[1], "tun")
        if tool == "wg":
            return self.wg_tool(argv[1:], input)
        if tool == "sysctl":
            return self.sysctl_tool(argv[1:])
        if tool == "nft":
            return self.nft(argv[1:], input)
        return Result(0, "", "")

    def create(self, name, kind):
        if name in self.links:
            return fail("", stdout=f"ERROR: ({name}) Failed to create TUN device: device or resource busy\n")
        self.links[name] = {"kind": kind, "mtu": 1420, "up": False, "addrs": set()}
        self.wg[name] = {"private_key": None, "port": 0, "peers": {}}
        return Result(0, "", "")

    # ------------------------------------------------------------------ ip
    def ip(self, args):
        if args[:2] == ["link", "add"]:
            if args[2] == "dev":
                return self.create(args[3], "wireguard") if self.kernel else fail("Error: Unknown device type.\n", 2)
            return Result(0, "", "") if self.kernel else fail("Error: Unknown device type.\n", 2)
        if args[:2] == ["link", "del"]:
            name = args[-1]
            if name not in self.links:
                return fail(f'Cannot find device "{name}"\n')
            del self.links[name]
            self.wg.pop(name, None)
            return Result(0, "", "")
        if args[:5] == ["-j", "-d", "link", "show", "dev"]:
            link = self.links.get(args[5])
            if link is None:
                return fail(f'Device "{args[5]}" does not exist.\n')
            flags = ["POINTOPOINT", "NOARP"] + (["UP", "LOWER_UP"] if link["up"] else [])
            return Result(0, json.dumps([{"ifname": args[5], "mtu": link["mtu"], "flags": flags,
                                          "linkinfo": {"info_kind": link["kind"]}}]), "")
        if args[:4] == ["-j", "addr", "show", "dev"]:
            link = self.links.get(args[4])
            if link is None:
                return fail(f'Device "{args[4]}" does not exist.\n')
            info = [{"family": "inet6" if ":" in a else "inet", "local": a.split("/")[0],
                     "prefixlen": int(a.split("/")[1]), "scope": "global"} for a in sorted(link["addrs"])]
            return Result(0, json.dumps([{"ifname": args[4], "addr_info": info}]), "")
        if args[0] == "address" and args[1] in ("add", "del"):
            link = self.links[args[4]]
            (link["addrs"].add if args[1] == "add" else link["addrs"].discard)(args[2])
            return Result(0, "", "")
        if args[:3] == ["link", "set", "dev"]:
            link = self.links.get(args[3])
            if link is None:
                return fail(f'Cannot find device "{args[3]}"\n')
            if args[4] == "mtu":
                link["mtu"] = int(args[5])
            elif args[4] == "up":
                link["up"] = True
            return Result(0, "", "")
        if args[:1] == ["-j"] and args[2:5] == ["route", "show", "default"]:
            dev = self.default_dev[int(args[1][1])]
            return Result(0, json.dumps([{"dst": "default", "gateway": "192.0.2.1", "dev": dev}] if dev else []), "")
        return Result(0, "", "")

    # ------------------------------------------------------------------ wg
    def wg_tool(self, args, input):
        name = args[1]
        state = self.wg.get(name)
        if state is None:
            verb = "access" if args[0] == "show" else "modify"
            return fail(f"Unable to {verb} interface: Protocol not supported\n")
        if args == ["show", name]:
            return Result(0, f"interface: {name}\n  public key: PUBLIC\n  listening port: {state['port']}\n", "")
        if args[0] == "show" and args[2] == "dump":
            lines = [f"{state['private_key'] or '(none)'}\tPUBLIC\t{state['port']}\toff"]
            for key, peer in state["peers"].items():
                lines.append("\t".join([key, peer["psk"] or "(none)", peer.get("endpoint") or "(none)",
                                        ",".join(peer["allowed"]) or "(none)", str(peer.get("hs", 0)),
                                        str(peer.get("rx", 0)), str(peer.get("tx", 0)),
                                        str(peer.get("keepalive") or "off")]))
            return Result(0, "\n".join(lines) + "\n", "")
        if args[0] == "set":
            key = args[3]
            if args[4] == "remove":
                state["peers"].pop(key, None)
                return Result(0, "", "")
            options = dict(zip(args[4::2], args[5::2]))
            peer = state["peers"].setdefault(key, {"hs": 0, "rx": 0, "tx": 0, "psk": None, "allowed": []})
            if "preshared-key" in options:
                peer["psk"] = input.strip() if options["preshared-key"] == "/dev/stdin" else None
            if "allowed-ips" in options:
                allowed = options["allowed-ips"].split(",")
                for other in state["peers"].values():
                    other["allowed"] = [a for a in other["allowed"] if a not in allowed]
                peer["allowed"] = allowed
            if "endpoint" in options:
                peer["endpoint"] = options["endpoint"]
            if "persistent-keepalive" in options:
                peer["keepalive"] = int(options["persistent-keepalive"])
            return Result(0, "", "")
        if args[0] == "syncconf":
            return self.syncconf(name, input)
        if args[0] == "addconf":
            for block in input.split("[Peer]")[1:]:
                fields = dict(line.split(" = ", 1) for line in block.strip().splitlines())
                peer = state["peers"].setdefault(fields["PublicKey"], {"hs": 0, "rx": 0, "tx": 0, "psk": None,
                                                                       "allowed": []})
                # like wg: a [Peer] section replaces the peer's allowed IPs
                peer["allowed"] = [a.strip() for a in fields.get("AllowedIPs", "").split(",") if a.strip()]
                if "Endpoint" in fields:
                    peer["endpoint"] = fields["Endpoint"]
                peer["keepalive"] = int(fields.get("PersistentKeepalive", 0))
                peer.setdefault("nudged", 0)
                peer["nudged"] += fields.get("PersistentKeepalive") == "1"
            return Result(0, "", "")
        return fail(f"Invalid subcommand: `{args[0]}'\n")

    def syncconf(self, name, text):
        state = self.wg[name]
        private, port, peers, current = None, 0, {}, None
        for line in text.splitlines():
            if line == "[Peer]":
                current = {"psk": None, "allowed": []}
                continue
            if " = " not in line:
                continue
            field, value = line.split(" = ", 1)
            if current is None:
                private = value if field == "PrivateKey" else private
                port = int(value) if field == "ListenPort" else port
            elif field == "PublicKey":
                peers[value] = current
            elif field == "PresharedKey":
                current["psk"] = value
            elif field == "AllowedIPs":
                current["allowed"] = [a.strip() for a in value.split(",")]
        if port and any(s["port"] == port for n, s in self.wg.items() if n != name):
            return fail("Unable to modify interface: Address already in use\n")
        state.update(private_key=private, port=port)
        old = state["peers"]
        state["peers"] = {key: {**old.get(key, {"hs": 0, "rx": 0, "tx": 0}), **peer} for key, peer in peers.items()}
        return Result(0, "", "")

    # ------------------------------------------------------------------ sysctl
    def sysctl_tool(self, args):
        if args[0] == "-n":
            if args[1] not in self.sysctl:
                return fail(f"sysctl: cannot stat /proc/sys/{args[1].replace('.', '/')}: No such file or directory\n", 255)
            return Result(0, self.sysctl[args[1]] + "\n", "")
        key, value = args[1].split("=", 1)
        self.sysctl[key] = value
        return Result(0, f"{key} = {value}\n", "")

    # ------------------------------------------------------------------ nft
    def nft(self, args, input):
        if args[:2] == ["-f", "/dev/stdin"]:
            return self.nft_script(input)
        if args[:4] == ["-t", "list", "table", "inet"]:
            table = self.tables.get(args[4])
            if table is None:
                return fail("Error: No such file or directory\nlist table inet x\n                 ^\n")
            return Result(0, f'table inet {args[4]} {{\n\tcomment "{table["hash"]}"\n}}\n', "")
        if args[:4] == ["-j", "list", "set", "inet"]:
            table = self.tables.get(args[4])
            if table is None:
                return fail("Error: No such file or directory\n")
            elements = sorted(table["sets"][args[5]])
            return Result(0, json.dumps({"nftables": [{"metainfo": {}}, {"set": {"name": args[5], "elem": elements}}]}), "")
        if args[:3] == ["list", "table", "inet"]:
            table = self.tables.get(args[3])
            return Result(0, table["text"], "") if table else fail("Error: No such file or directory\n")
        return Result(0, "", "")

    def nft_script(self, text):
        lines = text.splitlines()
        if len(lines) > 1 and lines[1].startswith("delete table inet "):
            name = lines[1].split()[-1]
            body = "\n".join(lines[2:])
            comment = re.search(r'comment "([^"]*)"', body).group(1)
            sets = {"suspended4": set(), "suspended6": set()}
            for set_name, elements in re.findall(r"set (\w+) \{\n\t\ttype \w+\n\t\telements = \{ ([^}]*) \}", body):
                sets[set_name] = {e.strip() for e in elements.split(",")}
            self.tables[name] = {"hash": comment, "text": body, "sets": sets}
            return Result(0, "", "")
        staged = {name: {k: set(v) for k, v in t["sets"].items()} for name, t in self.tables.items()}
        for number, line in enumerate(lines, 1):
            match = re.fullmatch(r"(add|delete) element inet (\w+) (\w+) \{ (\S+) \}", line)
            if not match:
                return fail(f"/dev/stdin:{number}:1-3: Error: syntax error\n{line}\n^^^\n")
            verb, table, set_name, element = match.groups()
            if table not in staged:
                return fail(f"/dev/stdin:{number}:18-19: Error: No such file or directory\n{line}\n  ^^\n")
            if verb == "add":
                staged[table][set_name].add(element)
            elif element in staged[table][set_name]:
                staged[table][set_name].discard(element)
            else:
                return fail(f"/dev/stdin:{number}:29-36: Error: Could not process rule: No such file or directory\n"
                            f"{line}\n        ^^^^^^^^\n")
        for name, sets in staged.items():
            self.tables[name]["sets"] = sets
        return Result(0, "", "")

    # ------------------------------------------------------------------ for assertions
    def commands(self):
        return self.runner.commands()

    def clear_calls(self):
        self.runner.calls.clear()


def make_context(tmp_path, system, **overrides):
    """A Context on a fresh database in tmp_path whose commands go to ``system``."""
    from puqvpn import settings as settings_module
    from puqvpn.db import connect
    from puqvpn.services.system import Context

    values = {"INSTANCE_DIR": str(tmp_path / "instance"), "WG_CONF_DIR": str(tmp_path / "wireguard"),
              "SYSTEM_APPLY": "1", "WG_BACKEND": "auto"}
    values.update(overrides)
    settings = settings_module.load(config_file=str(tmp_path / "absent.conf"), environ={}, **values)
    return Context(connect(settings["DATABASE"]), settings, system.runner)

"""The host's interface addresses, and the mynetworks value Postfix computes from them.

``local_interfaces()`` lists each configured interface address with its
prefix (IPv4 through SIOCGIFADDR/SIOCGIFNETMASK, IPv6 from
/proc/net/if_inet6). ``computed(style, inet_interfaces, inet_protocols)`` is
Postfix's mynetworks() for an unset ``mynetworks``: for each address this
host receives mail on (every interface for ``all``, 127.0.0.1 and ::1 for
``loopback-only``, else the listed addresses, with the prefix of the
interface that has them), limited to inet_protocols:

* ``host``: the address itself (``192.0.2.2/32``, ``[::1]/128``);
* ``subnet``: its interface's network (``192.0.2.0/24``, ``[fd00::]/64``);
* ``class``: the class A, B or C network of an IPv4 address; IPv6 as subnet.

IPv4 networks come first, then IPv6 ones in brackets, each once, in
interface order, space-separated, as ``postconf mynetworks`` prints them.
An unknown style gives the empty string (``validate`` refuses the setting).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def local_interfaces() -> list[IPInterface]:
    """Each configured interface address with its prefix (address/prefix, host bits kept)."""
    out: list[IPInterface] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, ifname in socket.if_nameindex():
            req = struct.pack("256s", ifname.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, req)[20:24])
                mask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, req)[20:24])
            except OSError:
                continue
            out.append(ipaddress.ip_interface(f"{addr}/{mask}"))
    finally:
        sock.close()
    # /proc/net/if_inet6: address, interface index, prefix, scope, flags, name (hex fields);
    # in interface order and, within one, global before link-local, as getifaddrs() gives them
    six: list[tuple[int, int, IPInterface]] = []
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 4:
                    continue
                hexaddr, index, plen, scope = fields[0], int(fields[1], 16), \
                    int(fields[2], 16), int(fields[3], 16)
                text = ":".join(hexaddr[i:i + 4] for i in range(0, 32, 4))
                six.append((index, scope,
                            ipaddress.ip_interface(f"{ipaddress.IPv6Address(text)}/{plen}")))
    except (OSError, ValueError):
        pass
    return out + [iface for _, _, iface in sorted(six, key=lambda t: (t[0], t[1]))]


def _listening(interfaces: list[str], everything: list[IPInterface]) -> list[IPInterface]:
    """The interface addresses inet_interfaces names (host names are not resolved here)."""
    words = [w.lower() for w in interfaces]
    if not words or "all" in words:
        return everything
    out: list[IPInterface] = []
    for word in words:
        if word == "loopback-only":
            candidates = ["127.0.0.1", "::1"]
        else:
            candidates = [word[1:-1] if word.startswith("[") and word.endswith("]") else word]
        for text in candidates:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            known = next((i for i in everything if i.ip == ip), None)
            out.append(known or ipaddress.ip_interface(ip))
    return out


def computed(style: str, inet_interfaces: list[str], inet_protocols: list[str]) -> str:
    """Postfix's mynetworks() value for mynetworks_style and the addresses listened on."""
    style = style.strip().lower()
    if style not in ("host", "subnet", "class"):
        return ""
    protocols = {p.lower() for p in inet_protocols}
    versions = {4, 6} if "all" in protocols or not protocols else \
        {v for v, name in ((4, "ipv4"), (6, "ipv6")) if name in protocols}
    found: list[str] = []
    for iface in _listening(inet_interfaces, local_interfaces()):
        ip = iface.ip
        if ip.version not in versions:
            continue
        if style == "host":
            net = ipaddress.ip_network(ip)
        elif style == "class" and ip.version == 4:
            first = int(str(ip).split(".")[0])
            plen = 8 if first < 128 else 16 if first < 192 else 24
            net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
        else:
            net = iface.network
        text = str(net) if net.version == 4 else f"[{net.network_address}]/{net.prefixlen}"
        if text not in found:
            found.append(text)
    found.sort(key=lambda t: t.startswith("["))
    return " ".join(found)

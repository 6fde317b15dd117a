"""Network helpers shared by the servers and stream links: interface addresses and free ports."""

from __future__ import annotations

import fcntl
import socket
import struct

LOOPBACK = ("lo", "lo0")
_SIOCGIFADDR = 0x8915


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name`` (Linux; loopback is 127.0.0.1)."""
    if name in LOOPBACK:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError as exc:
            raise ValueError(f"network interface {name!r} has no IPv4 address here ({exc}); "
                             f"check staging.network_interface in the machine profile") from None
    return socket.inet_ntoa(packed[20:24])


def free_port(host: str) -> int:
    """A TCP port on ``host`` that is free now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

"""Listening sockets for the lean front, made before anything heavy is imported.

``ucsproxy mock`` binds its port first and loads the codec, the model and the
rest afterwards: a client that connects meanwhile waits in the backlog and is
answered as soon as the core is ready. Only the standard library's ``socket``
is needed here.
"""

from __future__ import annotations

import socket


def bind_listeners(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Non-blocking listening sockets for every address ``host`` names, all on one port (0: a free one)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr[0], port, *addr[2:]))
            sock.listen(backlog)
            sock.setblocking(False)
            port = port or sock.getsockname()[1]  # every family on the same port
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets

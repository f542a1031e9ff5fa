"""free_port never hands the same port out twice in one process (a hub and its proxy's API
were once told the same port, and the hub could not bind)."""

from __future__ import annotations

import socket

from aicoe_devcluster import controlplane


def test_a_port_freed_by_the_kernel_is_not_handed_out_again(monkeypatch):
    given = iter([41001, 41001, 41001, 41002])

    class Socket(socket.socket):
        def getsockname(self):
            return ("127.0.0.1", next(given))

    monkeypatch.setattr(controlplane.socket, "socket", Socket)
    monkeypatch.setattr(controlplane, "_HANDED_OUT", set())
    assert (controlplane.free_port(), controlplane.free_port()) == (41001, 41002)


def test_many_ports_are_all_distinct_and_bindable():
    ports = [controlplane.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))

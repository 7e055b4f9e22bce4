"""The supervisor's exec router (vm/supervisor.py) over real unix sockets: a socket pair stands for the
guest's exec port, real clients connect to its abstract listening socket. No guest: what is checked is
the routing, the credit it enforces and when an id may be reused."""

from __future__ import annotations

import os
import select
import socket
import struct

from hutch.vm import frames
from hutch.vm.supervisor import ExecRouter


class Rig:
    def __init__(self) -> None:
        self.guest, port = socket.socketpair()
        self.name = b"\0hutch-test-router-%d-%d" % (os.getpid(), id(self))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.name)
        listener.listen(8)
        self.router = ExecRouter(port, listener)
        self.readers = self.router.fds()
        self.guest_buf = bytearray()

    def turn(self) -> None:
        """Let the router serve whatever is ready, until nothing is."""
        while True:
            ready, writable, _ = select.select(self.readers, self.router.writers(), [], 0.01)
            if not ready and not writable:
                return
            for fd in writable:
                self.router.flush(fd, self.readers)
            for fd in ready:
                if fd in self.readers:
                    self.router.handle(fd, self.readers)

    def client(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.name)
        sock.settimeout(2)
        self.turn()
        return sock

    def from_guest(self, kind: int, ident: int, payload: bytes = b"") -> None:
        self.guest.sendall(frames.pack(kind, ident, payload))
        self.turn()

    def at_guest(self) -> list[tuple[int, int, bytes]]:
        """The frames the router has sent to the guest by now (it may have to be turned to finish)."""
        self.guest.setblocking(False)
        while True:
            self.turn()
            try:
                self.guest_buf += self.guest.recv(1 << 20)
            except BlockingIOError:
                if not self.router.port_out:
                    return frames.split(self.guest_buf)

    def close(self) -> None:
        self.router.close()
        self.router.port.close()
        self.guest.close()


def _frames_of(sock: socket.socket) -> list[tuple[int, int, bytes]]:
    buf = bytearray()
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            buf += chunk
    except BlockingIOError:
        pass
    return frames.split(buf)


def test_stdin_flows_only_within_the_credit_the_guest_granted():
    rig = Rig()
    try:
        a = rig.client()
        a.sendall(frames.pack(frames.START, 0, b"config"))
        assert rig.at_guest() == [(frames.START, 1, b"config")]
        first = [b"a" * (frames.WINDOW // 2), b"b" * (frames.WINDOW // 2)]  # the implicit first window
        got = []
        for chunk in first:
            a.sendall(frames.pack(frames.STDIN, 0, chunk))
            got += rig.at_guest()
        assert got == [(frames.STDIN, 1, chunk) for chunk in first]
        rig.from_guest(frames.CREDIT, 1, struct.pack("<I", 5))
        assert _frames_of(a) == [(frames.CREDIT, 1, struct.pack("<I", 5))]
        a.sendall(frames.pack(frames.STDIN, 0, b"12345"))
        assert rig.at_guest() == [(frames.STDIN, 1, b"12345")]
        a.sendall(frames.pack(frames.STDIN, 0, b"6"))  # one byte beyond the window: dropped, process killed
        kill = (frames.SIGNAL, 1, struct.pack("<i", 9))
        assert rig.at_guest() == [kill, (frames.CREDIT, 1, struct.pack("<I", frames.UNLIMITED))]
        a.setblocking(True)
        assert a.recv(10) == b""
    finally:
        rig.close()


def test_the_agent_and_the_host_agree_on_the_window():
    from pathlib import Path

    import hutch.native

    source = (Path(hutch.native.__file__).parent / "vmagent" / "agent.h").read_text()
    assert f"#define WINDOW ({frames.WINDOW >> 10}u << 10)" in source


def test_an_id_is_reused_only_after_its_exit_and_a_gone_clients_output_is_dropped():
    rig = Rig()
    try:
        a = rig.client()
        a.sendall(frames.pack(frames.START, 0, b"a"))
        rig.at_guest()
        a.close()  # the client goes while its process runs
        rig.turn()
        assert [f[:2] for f in rig.at_guest()] == [(frames.SIGNAL, 1), (frames.CREDIT, 1)]
        b = rig.client()
        b.sendall(frames.pack(frames.START, 0, b"b"))
        assert rig.at_guest() == [(frames.START, 2, b"b")]  # 1 is still the killed process's
        rig.from_guest(frames.STDOUT, 1, b"late output")  # of the gone client: nobody gets it
        rig.from_guest(frames.EXIT, 1, struct.pack("<i", 137))
        assert _frames_of(b) == []
        c = rig.client()
        c.sendall(frames.pack(frames.START, 0, b"c"))
        assert rig.at_guest() == [(frames.START, 1, b"c")]  # free again once its EXIT came
        rig.from_guest(frames.STDOUT, 2, b"for b")
        rig.from_guest(frames.EXIT, 2, struct.pack("<i", 0))
        assert _frames_of(b) == [(frames.STDOUT, 2, b"for b"), (frames.EXIT, 2, struct.pack("<i", 0))]
        b.setblocking(True)
        assert b.recv(10) == b""  # closed after its EXIT
        c.close()
        b.close()
    finally:
        rig.close()


def test_a_client_that_does_not_read_holds_back_no_other():
    rig = Rig()
    try:
        slow, fast = rig.client(), rig.client()
        for sock in (slow, fast):
            sock.sendall(frames.pack(frames.START, 0, b""))
        rig.at_guest()
        chunk = b"x" * 60000
        for _ in range(40):  # 2.4 MB at a client that reads nothing: far beyond its socket's buffer
            rig.from_guest(frames.STDOUT, 1, chunk)
        rig.from_guest(frames.STDOUT, 2, b"hello")
        assert _frames_of(fast) == [(frames.STDOUT, 2, b"hello")]
        slow.close()
        fast.close()
    finally:
        rig.close()

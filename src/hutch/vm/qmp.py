"""A minimal QMP client: QEMU's JSON control protocol, one line per message, over a socket QEMU inherits.

The supervisor uses it when a guest does not come up: ``query-status`` says why (``internal-error`` is
the KVM emulation failure of a kernel this host's hypervisor cannot run, ``guest-panicked``, or still
``running``), and ``quit`` ends QEMU cleanly before the SIGKILL fallback.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from hutch.errors import HutchError


class Qmp:
    """A QMP session in command mode (greeting read, capabilities negotiated)."""

    def __init__(self, sock: socket.socket, timeout: float = 2.0, negotiated: bool = False) -> None:
        """``negotiated``: the greeting was read and the capabilities sent already (a template clone's
        restore requests open the session)."""
        self.sock = sock
        self.sock.settimeout(timeout)
        self._buf = b""
        self.events: list[dict] = []  # asynchronous events read while waiting for replies
        if negotiated:
            return
        greeting = self._message()
        if "QMP" not in greeting:
            raise HutchError(f"QMP: unexpected greeting {greeting!r}")
        self.execute("qmp_capabilities")

    def _message(self) -> dict:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HutchError("QMP: QEMU closed the monitor")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, arguments: dict | None = None) -> Any:
        """Run ``command``; its ``return`` value, events in between kept in ``events``, errors raised."""
        return self.execute_all([(command, arguments)])[0]

    def execute_all(self, commands: list[tuple[str, dict | None]]) -> list[Any]:
        """Send ``commands`` at once (QEMU runs them in order), then read their replies: one round trip
        instead of one per command. The first error is raised once every reply is read."""
        requests = [{"execute": c, **({"arguments": a} if a else {})} for c, a in commands]
        self.sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        results, error = [], None
        while len(results) < len(commands):
            reply = self._message()
            if "event" in reply:
                self.events.append(reply)
            elif "return" in reply:
                results.append(reply["return"])
            elif "error" in reply:
                command = commands[len(results)][0]
                results.append(None)
                error = error or HutchError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        if error is not None:
            raise error
        return results

    def await_migration(self, timeout: float) -> None:
        """Poll ``query-migrate`` until the outgoing migration completed (a template's save)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.execute("query-migrate").get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise HutchError(f"migration {status}")
            time.sleep(0.005)
        raise HutchError(f"migration did not complete within {timeout:g} s")


def status_then_quit(sock: socket.socket, negotiated: bool = False) -> str:
    """The VM's ``query-status``, then ``quit``; the status or why it could not be asked. The caller still
    reaps (or kills) QEMU."""
    try:
        session = Qmp(sock, negotiated=negotiated)
        state = str(session.execute("query-status").get("status", "unknown"))
    except (OSError, ValueError, HutchError) as err:
        return f"unknown ({err})"
    try:
        session.execute("quit")
    except (OSError, ValueError, HutchError):
        pass  # QEMU closing the monitor while answering is how quit succeeds
    return state

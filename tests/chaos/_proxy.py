"""A loopback TCP proxy that can cut the clients behind it off from the broker.

``cut()`` resets every connection through the proxy (both sides get an RST:
data in flight is lost, as when a network path dies and the connection is
torn down) and refuses new ones until ``heal()``. Clients on other paths to
the broker are not affected: that is how one worker becomes a zombie while
the rest of the group and the broker carry on.
"""

from __future__ import annotations

import socket
import struct

import trio

__all__ = ["TcpProxy"]

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target`` (``host:port``) until cut."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        host, _, target_port = target.rpartition(":")
        self._target = (host, int(target_port))
        self._streams: set[trio.SocketStream] = set()
        self.is_cut = False
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    def cut(self) -> None:
        """Reset every connection through the proxy; refuse new ones until :meth:`heal`."""
        self.is_cut = True
        for stream in list(self._streams):
            _reset(stream)
        self._streams.clear()

    def heal(self) -> None:
        self.is_cut = False

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.is_cut:
            _reset(client)
            return
        try:
            upstream = await trio.open_tcp_stream(*self._target)
        except OSError:
            _reset(client)
            return
        self.connections += 1
        self._streams |= {client, upstream}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        finally:
            self._streams -= {client, upstream}
            for stream in (client, upstream):
                _reset(stream)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data or self.is_cut:
                    break
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


def _reset(stream: trio.SocketStream) -> None:
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        stream.socket.close()
    except OSError:
        pass

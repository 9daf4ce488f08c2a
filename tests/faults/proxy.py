"""A small, hostile TCP proxy for loopback tests: it delays, cuts and refuses connections.

Run as a process: ``python -m tests.faults.proxy LISTEN_PORT TARGET_PORT SEED``. Each new
connection is refused with probability ``DROP``, otherwise forwarded with a random delay per
chunk; any chunk may cut the connection mid-stream with probability ``CUT``. Prints one JSON
line of counters on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys

DROP = 0.05  # refuse a new connection
CUT = 0.01  # cut a connection as it forwards a chunk
MAX_DELAY_S = 0.05


class Proxy:
    def __init__(self, target: int, seed: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.counts = {"connections": 0, "refused": 0, "cut": 0, "delayed_chunks": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        if self.rng.random() < DROP:
            self.counts["refused"] += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(
            self.pipe(reader, up_writer), self.pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.transport.abort()

    async def pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self.rng.random() < CUT:
                self.counts["cut"] += 1
                dst.transport.abort()
                return
            if self.rng.random() < 0.3:
                self.counts["delayed_chunks"] += 1
                await asyncio.sleep(self.rng.uniform(0, MAX_DELAY_S))
            dst.write(data)
            await dst.drain()
        dst.close()


async def main(listen: int, target: int, seed: int) -> None:
    proxy = Proxy(target, seed)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"listening": listen}), flush=True)
    await stop.wait()
    print(json.dumps(proxy.counts), flush=True)
    server.close()


if __name__ == "__main__":
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))

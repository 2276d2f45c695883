#!/usr/bin/env python3
"""A revproxy server written from docs/PROTOCOL.md alone: registers with a proxy for one
privacy policy and answers each request with the SHA1 hex of its payload.

    python3 server.py --proxy 127.0.0.1:2100 --id py-1 --policy 111
"""

import argparse
import asyncio
import hashlib
import signal
import sys

from wire import ACK, DATA, DEREGISTER, ERROR, PING, PONG, SETUP, frame, read_message


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Server:
    def __init__(self, server_id, policy):
        self.id = server_id
        self.policy = policy
        self.links = set()  # upstream links: connections the proxy opened to us
        self.links_closed = asyncio.Event()
        self.links_closed.set()

    def answer(self, request):
        payload = request["payload"]
        data = payload.encode() if isinstance(payload, str) else payload
        digest = hashlib.sha1(data).hexdigest()
        return {"type": ACK, "seq": request["seq"], "srcid": self.id,
                "destid": request["srcid"], "payload": digest, "payloadsize": len(digest)}

    async def serve_link(self, reader, writer):
        """One upstream link: the proxy sends DATA and PING, pipelined, and reads our answers."""
        self.links.add(writer)
        self.links_closed.clear()
        try:
            while (message := await read_message(reader)) is not None:
                if message["type"] == DATA:
                    writer.write(frame(self.answer(message)))
                elif message["type"] == PING:
                    writer.write(frame({"type": PONG, "seq": message["seq"]}))
                elif message["type"] == ERROR:
                    log("proxy error on upstream link:", message["code"], message["message"])
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log("upstream link lost:", e)
        finally:
            self.links.discard(writer)
            if not self.links:
                self.links_closed.set()
            writer.close()

    async def run(self, proxy_host, proxy_port, host):
        # Listen first: the proxy dials listenport as soon as it accepts our SETUP.
        listener = await asyncio.start_server(self.serve_link, host, 0)
        listenport = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
        writer.write(frame({"type": SETUP, "id": self.id, "privPolyId": self.policy,
                            "listenport": listenport}))
        log(f"registering {self.id} for policy {self.policy}, listening on {host}:{listenport}")

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        registration = asyncio.create_task(self.watch_registration(reader, writer))
        done, _ = await asyncio.wait([registration, asyncio.create_task(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if registration in done:
            return registration.result()  # the proxy closed our registration

        # SIGTERM: leave the pool, answer what is in flight, exit once the proxy has closed
        # its links to us (or after a drain timeout).
        log("draining")
        writer.write(frame({"type": DEREGISTER, "id": self.id}))
        await writer.drain()
        listener.close()
        try:
            await asyncio.wait_for(self.links_closed.wait(), timeout=10)
        except asyncio.TimeoutError:
            log("drain timeout: links still open")
        registration.cancel()
        writer.close()
        log("drained")
        return 0

    async def watch_registration(self, reader, writer):
        """The registration connection: answer PINGs; an ERROR means we were refused or removed."""
        registered = False
        while (message := await read_message(reader)) is not None:
            if message["type"] == PING:
                if not registered:  # the proxy answers an accepted SETUP with a PING
                    registered = True
                    log(f"registered {self.id} for policy {self.policy}")
                writer.write(frame({"type": PONG, "seq": message["seq"]}))
            elif message["type"] == ERROR:
                log("proxy refused or removed us:", message["code"], message["message"])
                return 1
        log("proxy closed the registration connection")
        return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="127.0.0.1:2100", help="host:port of the reverse proxy")
    parser.add_argument("--id", required=True, help="this server's id, unique among live servers")
    parser.add_argument("--policy", required=True, help="the privacy policy it serves")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: the one the registration leaves from")
    args = parser.parse_args()
    proxy_host, proxy_port = args.proxy.rsplit(":", 1)
    server = Server(args.id, args.policy)
    sys.exit(asyncio.run(server.run(proxy_host, int(proxy_port), args.host)))


if __name__ == "__main__":
    main()

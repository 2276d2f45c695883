#!/usr/bin/env python3
"""A revproxy client written from docs/PROTOCOL.md alone: sends every payload on one
connection, all in flight at once, and checks each answer is the SHA1 of its payload.

    python3 client.py --proxy 127.0.0.1:2100 --policy 111 hello world
"""

import argparse
import asyncio
import hashlib
import sys

from wire import ACK, DATA, ERROR, frame, read_message


async def run(proxy_host, proxy_port, client_id, policy, payloads):
    reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
    # A client picks its own seq per request; answers come back in any order.
    pending = dict(enumerate(payloads))
    for seq, payload in pending.items():
        writer.write(frame({"type": DATA, "seq": seq, "srcid": client_id, "privPoliId": policy,
                            "payload": payload}))
    await writer.drain()

    failures = 0
    while pending:
        answer = await read_message(reader)
        if answer is None:
            print(f"proxy closed the connection with {len(pending)} requests unanswered")
            return 1
        if answer["type"] == ERROR and "seq" not in answer:
            # About the connection, which the proxy then closes: SHUTTING_DOWN when it stopped (the requests
            # unanswered were not read, and may go to another proxy), BAD_REQUEST for bytes it could not read.
            print(f"proxy closed the connection with {len(pending)} requests unanswered: {answer['code']}: {answer['message']}")
            return 1
        payload = pending.pop(answer["seq"])
        if answer["type"] == ACK:
            data = payload.encode() if isinstance(payload, str) else payload
            ok = answer["payload"] == hashlib.sha1(data).hexdigest()
            print(f"seq {answer['seq']}: {answer['payload']} from {answer['srcid']}"
                  f"{'' if ok else ' WRONG'}")
        else:
            ok = False
            print(f"seq {answer['seq']}: {answer['code']}: {answer['message']}")
        failures += not ok
    writer.close()
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", default="127.0.0.1:2100", help="host:port of the reverse proxy")
    parser.add_argument("--id", default="py-client", help="this client's id (srcid)")
    parser.add_argument("--policy", required=True, help="privacy policy of the requests")
    parser.add_argument("payloads", nargs="+", help="payloads to send, as text")
    args = parser.parse_args()
    proxy_host, proxy_port = args.proxy.rsplit(":", 1)
    sys.exit(asyncio.run(run(proxy_host, int(proxy_port), args.id, args.policy, args.payloads)))


if __name__ == "__main__":
    main()

"""Frames of the revproxy wire (docs/PROTOCOL.md, "Frames"): a 4-byte big-endian
length, then one MessagePack map of exactly that many bytes."""

import asyncio
import struct

import msgpack

DATA, SETUP, ACK, ERROR, PING, PONG, DEREGISTER = range(7)

MAX_FRAME = 1024 * 1024  # the proxy's default --max-frame


async def read_message(reader):
    """The next message on the stream, or None when the peer closed it cleanly."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None
    (length,) = struct.unpack(">I", header)
    if not 0 < length <= MAX_FRAME:
        raise ValueError(f"bad frame length {length}")
    # raw=False: MessagePack str -> Python str, bin -> bytes, as the protocol keeps them apart.
    return msgpack.unpackb(await reader.readexactly(length), raw=False)


def frame(message):
    # use_bin_type=True: Python bytes go out as MessagePack bin, str as str.
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body



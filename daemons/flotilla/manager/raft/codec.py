"""Safe encoding for everything the Raft layer writes to the network or disk.

pysyncobj pickles its messages, log entries and snapshots. Flotilla replaces
all of those paths with msgpack restricted to plain data (dicts, lists,
strings, bytes, numbers, booleans, None), so no bytes received from a peer are
ever turned into arbitrary objects.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

# Frames on a Raft connection: 4-byte big-endian payload length, 1-byte kind.
FRAME_HEADER = struct.Struct(">IB")
FRAME_MESSAGE = 0
FRAME_PING = 1
MAX_FRAME = 64 * 1024 * 1024

# Message types pysyncobj exchanges between members. Anything else is refused.
ALLOWED_TYPES = frozenset({
    "request_vote",
    "response_vote",
    "append_entries",
    "next_node_idx",
    "apply_command",
    "apply_command_response",
    "timeout_now",
    "pre_vote",
    "pre_vote_response",
})
# Fields that must be integers (booleans) in the messages Flotilla adds.
_INT_FIELDS = {"pre_vote": ("term", "last_log_index", "last_log_term"),
               "pre_vote_response": ("term", "current_term")}


# A Raft log entry as pysyncobj keeps it: (command, index, term).
Entry = tuple[bytes, int, int]


class CodecError(ValueError):
    """Raised for bytes that do not decode to an acceptable value."""


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def pack_batch(key: str, packed_items: list[bytes]) -> bytes:
    """``pack({key: [items]})`` from items packed already (each once)."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join([packer.pack_map_header(1), packer.pack(key),
                     packer.pack_array_header(len(packed_items)), *packed_items])


def unpack(data: bytes) -> Any:
    # Frame size is bounded by the reader (MAX_FRAME) before this is called.
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except MemoryError:
        raise               # says nothing about the bytes
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"undecodable payload: {exc.__class__.__name__}") from None


def unpack_lists(data: bytes) -> Any:
    """Like unpack() but arrays decode as lists (for mutable application data)."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except MemoryError:
        raise               # says nothing about the bytes
    except Exception as exc:
        raise CodecError(f"undecodable payload: {exc.__class__.__name__}") from None


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(len(payload), kind) + payload


def encode_message(message: Any) -> bytes:
    return encode_frame(FRAME_MESSAGE, pack(message))


def decode_message(payload: bytes) -> str | dict:
    """Decode and sanity-check one pysyncobj message received from a peer.

    The first message on a connection is the sender's Raft address (a str);
    every later one is a dict with a known ``type``. Oversized single-entry
    'transmission' messages are refused: Flotilla keeps every log entry far
    below the batch size so pysyncobj never needs them, and their receiving
    side would unpickle.
    """
    message = unpack(payload)
    if isinstance(message, str):
        return message
    if not isinstance(message, dict):
        raise CodecError("message is not a map")
    mtype = message.get("type")
    if mtype not in ALLOWED_TYPES:
        raise CodecError(f"unknown message type {mtype!r}")
    if "transmission" in message:
        raise CodecError("chunked entry transmission is not accepted")
    if mtype == "append_entries":
        entries = message.get("entries", ())
        if not isinstance(entries, tuple):
            raise CodecError("entries is not a list")
        for entry in entries:
            if (not isinstance(entry, tuple) or len(entry) != 3
                    or not isinstance(entry[0], bytes)
                    or not isinstance(entry[1], int) or not isinstance(entry[2], int)):
                raise CodecError("malformed log entry")
        serialized = message.get("serialized")
        if serialized is not None and not (
                isinstance(serialized, tuple) and len(serialized) == 3
                and isinstance(serialized[0], bytes)):
            raise CodecError("malformed snapshot chunk")
    if mtype == "apply_command" and not isinstance(message.get("command"), bytes):
        raise CodecError("malformed command")
    for name in _INT_FIELDS.get(mtype, ()):
        value = message.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError(f"malformed {mtype}: {name}")
    if mtype == "pre_vote_response" and not isinstance(message.get("granted"), bool):
        raise CodecError("malformed pre_vote_response: granted")
    return message

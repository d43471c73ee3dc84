#!/usr/bin/env python3
"""Writes the seed corpus (seeds/<target>/seed-*) from tests/vectors/messages.json
and a few handcrafted messages. Run from anywhere; output is deterministic."""
import hashlib
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "tests", "vectors", "messages.json")

vectors = json.load(open(VECTORS))
messages = [bytes.fromhex(v["hex"]) for v in vectors["valid"] + vectors["invalid"]]
handmade = [
    # add(1, 2), then a notification, then a truncated request.
    bytes.fromhex("94000 1a3616464920102".replace(" ", ""))
    + bytes.fromhex("9302a46e6f746590")
    + bytes.fromhex("9400"),
    # Deep nesting inside params.
    bytes.fromhex("940001a46563686f91") + b"\x91" * 12 + b"\xc0",
    # Huge declared lengths: str32, array32, map32, bin32, ext32.
    bytes.fromhex("940001a46563686f91dbffffffff"),
    bytes.fromhex("940001a46563686fdd7fffffff"),
    bytes.fromhex("940001a46563686f91dfffffffff"),
    bytes.fromhex("9401 01c0c6ffffffff".replace(" ", "")),
    bytes.fromhex("940001a46563686f91c9ffffffff01"),
    # The reserved byte, invalid UTF-8 method, bin method.
    bytes.fromhex("940001c1"),
    bytes.fromhex("940001a2ff fe90".replace(" ", "")),
    bytes.fromhex("940001c403616464920102"),
    # A pool request with a map and ext params; a response we never asked for.
    bytes.fromhex("940002a9") + b"echo_pool" + bytes.fromhex("9282a16101a162c3d4010a"),
    bytes.fromhex("940101c0a26f6b"),
]

def write(target, blobs):
    out = os.path.join(HERE, "seeds", target)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for b in blobs:
        name = "seed-" + hashlib.sha1(b).hexdigest()[:16]
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)

streams = messages + handmade
# decode: [size, depth, decoded, split] + stream. Generous and tight limits.
decode = []
for i, m in enumerate(streams):
    decode.append(bytes([250, 9, 7, i % 4]) + m)
    decode.append(bytes([len(m) % 200, 3, 6, (i + 1) % 4]) + m)
# Several messages in one stream.
decode.append(bytes([250, 9, 7, 2]) + b"".join(messages[:20]))
decode.append(bytes([250, 9, 4, 0]) + b"".join(handmade[:3]))
write("decode", decode)

# server: [split] + stream.
server = [bytes([i % 4]) + m for i, m in enumerate(streams)]
server.append(bytes([2]) + b"".join(messages[:20]))
write("server", server)

# roundtrip: [size, depth, decoded, kind] + a value program; a few shapes.
roundtrip = [
    bytes([250, 15, 3, 0]) + bytes(8) + b"\x03add\x02\x02" + bytes(8) + b"\x04\x05",
    bytes([250, 15, 3, 1]) + bytes(range(64)),
    bytes([250, 15, 3, 2]) + b"\x01n\x05" + bytes([11, 3, 13, 2, 7, 1, 65, 8, 1, 66, 10, 1, 4, 1, 2, 3, 4, 14 | 0x40, 6, 9, 9, 9, 9, 9, 9, 9, 9]),
    bytes([40, 2, 0, 0]) + bytes(range(255, 0, -3)),
    bytes([150, 4, 1, 0]) + bytes([7, 0, 0, 0, 0, 0, 0, 0, 1, 65, 252, 10]) + bytes(300),
]
write("roundtrip", roundtrip)

import pickle

import pytest

from flotilla.manager.raft import codec


def test_round_trip_of_append_entries():
    msg = {"type": "append_entries", "term": 3, "commit_index": 9,
           "entries": [(b"\x00abc", 10, 3)], "prevLogIdx": 9, "prevLogTerm": 3}
    out = codec.decode_message(codec.pack(msg))
    assert out["entries"] == ((b"\x00abc", 10, 3),)
    assert out["term"] == 3


def test_pre_vote_messages_round_trip():
    ask = {"type": "pre_vote", "term": 4, "last_log_index": 9, "last_log_term": 3}
    answer = {"type": "pre_vote_response", "term": 4, "current_term": 3, "granted": True}
    assert codec.decode_message(codec.pack(ask)) == ask
    assert codec.decode_message(codec.pack(answer)) == answer


def test_address_message():
    assert codec.decode_message(codec.pack("127.0.0.1:5000")) == "127.0.0.1:5000"


@pytest.mark.parametrize("payload", [
    pickle.dumps({"type": "append_entries"}),            # a pickle is just bad bytes here
    b"\xc1",                                              # reserved msgpack byte
    codec.pack({"type": "evil"}),
    codec.pack({"no": "type"}),
    codec.pack([1, 2, 3]),
    codec.pack({"type": "append_entries", "transmission": "start", "data": b"x"}),
    codec.pack({"type": "append_entries", "entries": [(1, 2, 3)]}),
    codec.pack({"type": "apply_command", "command": "str"}),
    codec.pack({"type": "pre_vote", "term": 3, "last_log_index": 9}),
    codec.pack({"type": "pre_vote", "term": "3", "last_log_index": 9, "last_log_term": 2}),
    codec.pack({"type": "pre_vote", "term": True, "last_log_index": 9, "last_log_term": 2}),
    codec.pack({"type": "pre_vote_response", "term": 3, "current_term": 2, "granted": 1}),
    codec.pack({"type": "pre_vote_response", "term": 3, "granted": False}),
])
def test_refused_payloads(payload):
    with pytest.raises(codec.CodecError):
        codec.decode_message(payload)


def test_unpack_never_builds_objects():
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))
    with pytest.raises(codec.CodecError):
        codec.decode_message(pickle.dumps(Boom()))

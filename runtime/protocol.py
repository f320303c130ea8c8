"""What the runtime reads of JetStream's wire protocol by hand: pure functions, no I/O.

nats-py parses these too, but into objects that cost more than the one number a hot path needs
(``Msg.metadata`` builds every field of an ack subject; ``PubAck.from_response`` goes through
``json.loads``), or not at all (a refused append's actual last sequence is only in its text). Each
function here has unit tests that need no server (``tests/test_protocol.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for an append refused by ``Nats-Expected-Last-(Subject-)Sequence``."""
WRONG_LAST_SEQUENCE_UNSAID: Final = 10164
"""The same refusal without the sequence found ("wrong last sequence"), as a clustered stream's
leader gives it (seen with 3 replicas on nats-server 2.15)."""
REFUSED_EXPECTATION: Final = frozenset({WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_UNSAID})
"""Every code of an append refused because the last sequence was not the one expected."""
FENCING_SINCE: Final = (2, 11)
"""The first nats-server version that honours ``Nats-Expected-Last-Subject-Sequence-Subject``.
Older servers ignore the header and check the exact subject instead, which refuses every
fenced append of a task's history (and fences nothing)."""


class AckSubject(NamedTuple):
    """The fields of a delivered message's reply subject (``$JS.ACK...``)."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    pending: int


def parse_ack_subject(reply: str | None) -> AckSubject | None:
    """The reply subject of a message a JetStream consumer delivered, or None for any other.

    Two forms exist: ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    <pending>`` (9 tokens), and on newer servers the same after a domain and an account hash, with
    perhaps a random token at the end (11 or 12 tokens)."""
    if not reply:
        return None
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    if len(tokens) == 9:
        fields = tokens[2:9]
    elif len(tokens) in (11, 12):
        fields = tokens[4:11]
    else:
        return None
    stream, consumer, *numbers = fields
    if not all(n.isdigit() for n in numbers):
        return None
    delivered, stream_seq, consumer_seq, timestamp, pending = (int(n) for n in numbers)
    return AckSubject(stream, consumer, delivered, stream_seq, consumer_seq, timestamp, pending)


class PullStatus(NamedTuple):
    """A status message on a pull request's inbox instead of a stored message."""

    code: str
    """``100`` idle heartbeat; ``404`` nothing there (no_wait); ``408`` the request expired;
    ``409`` the server dropped it (a limit was reached, the consumer was deleted, ...)."""
    unfilled: int | None
    """``Nats-Pending-Messages``: how many of the request's messages will not come, when said."""

    @property
    def heartbeat(self) -> bool:
        return self.code == "100"


def pull_status(headers: Mapping[str, str] | None) -> PullStatus | None:
    """The status a message on a pull inbox carries, or None for a stored message."""
    if not headers:
        return None
    code = headers.get("Status")
    if not code:
        return None
    pending = headers.get("Nats-Pending-Messages")
    return PullStatus(code, int(pending) if pending and pending.isdigit() else None)


class PubAck(msgspec.Struct, frozen=True, gc=False):
    """JetStream's answer to a publish: where it was stored, or why it was refused."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None

    @property
    def error_code(self) -> int | None:
        code = (self.error or {}).get("err_code")
        return code if isinstance(code, int) else None


_pub_ack: Final = msgspec.json.Decoder(PubAck)


def decode_pub_ack(data: bytes) -> PubAck:
    """The acknowledgement of a publish (raises ``msgspec.DecodeError`` for anything else)."""
    return _pub_ack.decode(data)


_LAST_SEQUENCE: Final = re.compile(r"wrong last sequence: (\d+)")


def found_sequence(error: Mapping[str, Any] | None) -> int | None:
    """The sequence a refused fenced append found in place of the one it expected: the stream
    sequence of the last message on the fenced subjects, read from the error's description
    (``wrong last sequence: 41``). None when the error is another one or does not say."""
    if not error or error.get("err_code") != WRONG_LAST_SEQUENCE:
        return None
    match = _LAST_SEQUENCE.search(str(error.get("description", "")))
    return int(match.group(1)) if match else None


def fencing_supported(version: tuple[int, int, int]) -> bool:
    """True if a server of this version fences appends on a wildcard of subjects."""
    return version[:2] >= FENCING_SINCE


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)

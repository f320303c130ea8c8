"""Encoders and decoders, built once and reused (msgspec's own advice)."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from victoria.events.contracts import AnyServiceEvent, AnyTaskEvent, FilesReply, FilesRequest, Message

_encoder: Final = msgspec.json.Encoder()
task_decoder: Final = msgspec.json.Decoder(AnyTaskEvent)
service_decoder: Final = msgspec.json.Decoder(AnyServiceEvent)
files_request_decoder: Final = msgspec.json.Decoder(FilesRequest)
files_reply_decoder: Final = msgspec.json.Decoder(FilesReply)


def encode(message: Message | msgspec.Struct | dict[str, Any]) -> bytes:
    return _encoder.encode(message)

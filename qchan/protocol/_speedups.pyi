from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

def decode_frames(plaintext: bytes, /) -> list[list[Any]] | None: ...
def set_schemas(schemas: dict[int, str], /) -> None: ...
def set_aead(encrypt: int, decrypt: int, /) -> None: ...
def seal_message(key: bytes, nonce: int, plaintext: Buffer, /) -> bytes: ...
def open_messages(
    key: bytes,
    nonce: int,
    data: Buffer,
    offset: int,
    frames: list[list[Any]],
    first_kind: int,
    /,
) -> tuple[int, int, bytes | None]: ...

"""A fuzz input read as a stream of choices, the same way under atheris, hypothesis and replay.

Every target takes plain ``bytes``; structured targets read their choices from a
:class:`Choices` over those bytes. Reading past the end yields zeros (so every input means
something, and a shorter input is a prefix of a longer one's meaning, which is what lets
libFuzzer and hypothesis shrink well). :class:`Script` writes the same stream, for seeds.
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["U64_MAX", "Choices", "Script"]

U64_MAX: Final = 2**64 - 1


@final
class Choices:
    """Reads choices off ``data``; past its end every choice is 0."""

    __slots__ = ("_data", "_position")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    @property
    def exhausted(self) -> bool:
        return self._position >= len(self._data)

    def byte(self) -> int:
        position = self._position
        self._position = position + 1
        return self._data[position] if position < len(self._data) else 0

    def below(self, n: int) -> int:
        """A choice in ``range(n)`` (one byte for n <= 256, two up to 65536)."""
        if n <= 256:
            return self.byte() % n
        return (self.byte() << 8 | self.byte()) % n

    def flag(self) -> bool:
        return self.byte() & 1 == 1

    def chance(self, percent: int) -> bool:
        return self.byte() % 100 < percent

    def u64(self) -> int:
        return int.from_bytes(self.take(8).ljust(8, b"\0"), "big")

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at the end of the input)."""
        start = self._position
        self._position = start + n
        return self._data[start : start + n]

    def blob(self, most: int) -> bytes:
        """A length-prefixed run of at most ``most`` bytes."""
        return self.take(self.below(most + 1))

    def rest(self) -> bytes:
        data = self._data[self._position :]
        self._position = len(self._data)
        return data


@final
class Script:
    """Writes the choices a :class:`Choices` will read back (to build seed inputs)."""

    __slots__ = ("_out",)

    def __init__(self) -> None:
        self._out = bytearray()

    def byte(self, value: int) -> Script:
        self._out.append(value & 0xFF)
        return self

    def below(self, n: int, value: int) -> Script:
        assert 0 <= value < n
        if n <= 256:
            return self.byte(value)
        return self.byte(value >> 8).byte(value)

    def u64(self, value: int) -> Script:
        self._out += value.to_bytes(8, "big")
        return self

    def raw(self, data: bytes) -> Script:
        self._out += data
        return self

    def blob(self, data: bytes, most: int) -> Script:
        return self.below(most + 1, len(data)).raw(data)

    def bytes(self) -> bytes:
        return bytes(self._out)

"""A small Noise Protocol Framework engine (revision 34) for one suite: 25519, ChaChaPoly, BLAKE2b.

Theory of operation: the three objects of the specification, in its own words and order.

* :class:`CipherState` holds an AEAD key and a nonce counter; it encrypts and decrypts messages.
* :class:`SymmetricState` holds the chaining key ``ck`` and the handshake hash ``h``, and mixes
  every public key, Diffie-Hellman result, pre-shared key and ciphertext into them.
* :class:`HandshakeState` walks a :class:`HandshakePattern` token by token (``e``, ``s``, ``ee``,
  ``es``, ``se``, ``ss``, ``psk``) and, after the last handshake message, splits into the two
  transport CipherStates.

Patterns come from :func:`pattern_from_name`: the one-way, interactive and deferred patterns of
the specification (sections 7.4 and 7.5), with any ``pskN`` modifiers. Fallback and hfs are not
supported. The engine is sans-IO and knows nothing of qchan's own handshake
(:mod:`qchan.crypto.handshake` builds that on top of it).

Errors, and why they are what they are:

* :meth:`CipherState.decrypt_with_ad` raises :class:`~qchan.ProtocolError` when a message fails
  authentication (including ciphertexts shorter than the 16-byte tag), and
  :meth:`CipherState.encrypt_with_ad` / ``decrypt_with_ad`` raise it when the nonce is exhausted:
  after a handshake, a bad message means a broken or hostile peer, and the connection must close.
* :class:`HandshakeState` raises :class:`~qchan.AuthenticationError` for every failure of a
  handshake message: too short, failing authentication, or carrying a low-order public key (the
  X25519 result is all zeros, which libsodium refuses): no session may come out of it.
* Misuse by the caller (wrong key sizes, unsupported patterns, calls out of turn) raises
  ``ValueError`` or ``RuntimeError``. No exception of PyNaCl's ever escapes this module.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, TypeAlias, final

from nacl import _sodium
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

from qchan._errors import AuthenticationError, ProtocolError

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "TAGLEN",
    "Buffer",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "SymmetricState",
    "aead_addresses",
    "dh",
    "pattern_from_name",
    "public_key",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What the encrypting and decrypting calls accept; anything but ``bytes`` costs one copy."""

DHLEN: Final = 32
HASHLEN: Final = 64
TAGLEN: Final = 16
MAX_NONCE: Final = 2**64 - 1
"""Reserved by the specification (section 5.1): a CipherState never uses it."""
MAX_MESSAGE_LEN: Final = 65535
"""The largest Noise message, handshake or transport (section 3)."""

_SUITE: Final = "25519_ChaChaPoly_BLAKE2b"
_blake2b: Final = hashlib.blake2b
_nonce: Final = struct.Struct("<4xQ").pack  # 4 zero bytes, then the counter little-endian

# The AEAD is called through PyNaCl's cffi binding of libsodium directly: PyNaCl's Python
# wrappers check and format on every call and cost about 3.5 us where the call itself costs 1
# (this is the per-message path). Lengths and types are checked by our callers, once.
_ffi: Final = _sodium.ffi
_lib: Final = _sodium.lib
_NULL: Final = _ffi.NULL


def _seal(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    size = len(plaintext) + TAGLEN
    out = _ffi.new("unsigned char[]", size)
    _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
        out, _NULL, plaintext, len(plaintext), ad, len(ad), _NULL, nonce, key
    )
    return _ffi.buffer(out, size)[:]  # type: ignore[no-any-return]


def _open(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes | None:
    """The plaintext, or None if ``ciphertext`` (at least TAGLEN bytes) fails authentication."""
    size = len(ciphertext) - TAGLEN
    out = _ffi.new("unsigned char[]", size or 1)
    failed = _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
        out, _NULL, _NULL, ciphertext, len(ciphertext), ad, len(ad), nonce, key
    )
    return None if failed else _ffi.buffer(out, size)[:]


_AEAD_FUNCTIONS: Final = (
    "crypto_aead_chacha20poly1305_ietf_encrypt",
    "crypto_aead_chacha20poly1305_ietf_decrypt",
)
_AEAD_TYPES: Final = (
    "int(*)(unsigned char *, unsigned long long *, unsigned char *, unsigned long long, "
    "unsigned char *, unsigned long long, unsigned char *, unsigned char *, unsigned char *)",
    "int(*)(unsigned char *, unsigned long long *, unsigned char *, unsigned char *, "
    "unsigned long long, unsigned char *, unsigned long long, unsigned char *, unsigned char *)",
)


def aead_addresses() -> tuple[int, int]:
    """The addresses of libsodium's ChaCha20-Poly1305 (IETF) encrypt and decrypt functions.

    For C code that seals transport messages itself (:mod:`qchan.protocol._speedups`): it
    calls the very functions this module does, in the library PyNaCl ships. Raises
    ``RuntimeError`` if their C signatures are not the ones that code was written for.
    """
    addresses = []
    for name, expected in zip(_AEAD_FUNCTIONS, _AEAD_TYPES, strict=True):
        pointer = _ffi.addressof(_lib, name)
        if _ffi.typeof(pointer).cname != expected:
            raise RuntimeError(f"unexpected C signature of libsodium's {name}")
        addresses.append(int(_ffi.cast("uintptr_t", pointer)))
    return addresses[0], addresses[1]


def _as_bytes(data: Buffer) -> bytes:
    # PyNaCl takes only bytes; memoryview() refuses ints, so bytes(5) can never sneak in.
    return data if isinstance(data, bytes) else bytes(memoryview(data))


def _check_key(name: str, key: bytes) -> bytes:
    # crypto_scalarmult does not check lengths: a short buffer would be read past its end.
    if not isinstance(key, bytes) or len(key) != DHLEN:
        raise ValueError(f"{name} must be {DHLEN} bytes")
    return key


# -- the crypto functions of the suite (section 12) ---------------------------------------------


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``. Raises ``ValueError`` unless it is 32 bytes."""
    return crypto_scalarmult_base(_check_key("a private key", private))


@dataclass(frozen=True, slots=True, eq=False)  # no == on secrets: it is not constant-time
class KeyPair:
    """An X25519 key pair; ``repr()`` hides ``private``.

    Build it with :meth:`generate` or :meth:`from_private`. The constructor checks sizes but
    trusts that ``public`` belongs to ``private``: it saves a scalar multiplication where the
    public key is already known (a :class:`~qchan.crypto.NodeKey` keeps its pair).
    """

    private: bytes = field(repr=False)
    public: bytes

    def __post_init__(self) -> None:
        _check_key("a private key", self.private)
        _check_key("a public key", self.public)

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """Raises ``ValueError`` unless ``private`` is 32 bytes."""
        return cls(private, public_key(private))

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's CSPRNG."""
        return cls.from_private(os.urandom(DHLEN))


def dh(private: bytes, public: bytes) -> bytes:
    """X25519 of our ``private`` key and the peer's ``public`` key, both 32 bytes.

    Raises :class:`~qchan.AuthenticationError` if ``public`` is a low-order point (the result
    would be all zeros, so the peer could know the shared secret without our key).
    """
    _check_key("a public key", public)  # PyNaCl would read past the end of a short one
    try:
        return crypto_scalarmult(private, public)
    except CryptoError as exc:  # libsodium refuses an all-zero result
        raise AuthenticationError("the peer's public key is a low-order point") from exc


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, _blake2b)


def _hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes, bytes]:
    # Section 4.3 with num_outputs 3; callers needing two ignore the third (one HMAC, ~1 us).
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


# -- CipherState (section 5.1) -------------------------------------------------------------------


@final
class CipherState:
    """An AEAD key (or none yet) and a 64-bit nonce counter that never repeats or wraps."""

    __slots__ = ("_key", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        """Start with ``key`` (32 bytes) or with no key, and nonce 0."""
        self._key = None if key is None else _check_key("a cipher key", key)
        self._n = 0

    @property
    def has_key(self) -> bool:
        return self._key is not None

    @property
    def key(self) -> bytes | None:
        """The key (the specification's ``k``), for a fast path that seals with it directly."""
        return self._key

    @property
    def nonce(self) -> int:
        """The nonce the next message will use."""
        return self._n

    def set_nonce(self, nonce: int) -> None:
        """Set the next nonce (section 5.1 SetNonce). Raises ``ValueError`` outside 0..2**64-1."""
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("a nonce is a 64-bit unsigned integer")
        self._n = nonce

    def take_nonce(self) -> int:
        """The nonce for one message encrypted elsewhere (a fast path with :attr:`key`); it
        counts as used. Raises :class:`~qchan.ProtocolError` once exhausted, as
        :meth:`encrypt_with_ad` does."""
        n = self._n
        if n >= MAX_NONCE:
            self._next_nonce()  # (raises)
        self._n = n + 1
        return n

    def _next_nonce(self) -> int:
        n = self._n
        if n >= MAX_NONCE:
            raise ProtocolError(
                "cipher nonce exhausted after 2**64-1 messages: close the connection "
                "and make a new handshake"
            )
        return n

    def encrypt_with_ad(self, ad: bytes, plaintext: Buffer) -> bytes:
        """Encrypt ``plaintext`` (returned unchanged while there is no key).

        Raises :class:`~qchan.ProtocolError` if the nonce is exhausted.
        """
        key = self._key
        if key is None:
            return _as_bytes(plaintext)
        n = self._next_nonce()
        ciphertext: bytes = _seal(_as_bytes(plaintext), ad, _nonce(n), key)
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: Buffer) -> bytes:
        """Decrypt and authenticate ``ciphertext`` (returned unchanged while there is no key).

        Raises :class:`~qchan.ProtocolError` if it fails authentication (it was corrupted,
        forged, truncated, replayed or reordered, or is shorter than the tag) or the nonce is
        exhausted. The nonce advances only on success, as the specification says.
        """
        key = self._key
        if key is None:
            return _as_bytes(ciphertext)
        n = self._next_nonce()
        if len(ciphertext) < TAGLEN:  # PyNaCl would raise a raw ValueError (negative length)
            raise ProtocolError(f"message of {len(ciphertext)} bytes is shorter than its tag")
        plaintext = _open(_as_bytes(ciphertext), ad, _nonce(n), key)
        if plaintext is None:
            raise ProtocolError(
                "message failed authentication (corrupted, forged, replayed or out of order)"
            )
        self._n = n + 1
        return plaintext


# -- SymmetricState (section 5.2) ----------------------------------------------------------------


@lru_cache(maxsize=64)
def _initial_hash(protocol_name: bytes) -> bytes:
    if len(protocol_name) <= HASHLEN:
        return protocol_name.ljust(HASHLEN, b"\x00")
    return _blake2b(protocol_name).digest()


@final
class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and the handshake's CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        self.h = self.ck = _initial_hash(protocol_name)
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _blake2b(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Raises :class:`~qchan.AuthenticationError` if ``ciphertext`` fails authentication."""
        try:
            plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        except ProtocolError as exc:
            raise AuthenticationError(
                "message failed authentication (wrong keys, or corrupted or forged)"
            ) from exc
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The two transport CipherStates: initiator-to-responder, then responder-to-initiator."""
        temp_k1, temp_k2 = _hkdf2(self.ck, b"")
        return CipherState(temp_k1[:32]), CipherState(temp_k2[:32])


# -- Handshake patterns (section 7) --------------------------------------------------------------

# The patterns as the specification writes them: pre-messages, "...", then messages. A line
# starting "->" is sent by the initiator, "<-" by the responder.
_BASE_PATTERNS: Final[dict[str, str]] = {
    # one-way (7.4)
    "N": "<- s | ... | -> e, es",
    "K": "-> s | <- s | ... | -> e, es, ss",
    "X": "<- s | ... | -> e, es, s, ss",
    # interactive, fundamental (7.4)
    "NN": "-> e | <- e, ee",
    "NK": "<- s | ... | -> e, es | <- e, ee",
    "NX": "-> e | <- e, ee, s, es",
    "KN": "-> s | ... | -> e | <- e, ee, se",
    "KK": "-> s | <- s | ... | -> e, es, ss | <- e, ee, se",
    "KX": "-> s | ... | -> e | <- e, ee, se, s, es",
    "XN": "-> e | <- e, ee | -> s, se",
    "XK": "<- s | ... | -> e, es | <- e, ee | -> s, se",
    "XX": "-> e | <- e, ee, s, es | -> s, se",
    "IN": "-> e, s | <- e, ee, se",
    "IK": "<- s | ... | -> e, es, s, ss | <- e, ee, se",
    "IX": "-> e, s | <- e, ee, se, s, es",
    # interactive, deferred (7.5)
    "NK1": "<- s | ... | -> e | <- e, ee, es",
    "NX1": "-> e | <- e, ee, s | -> es",
    "X1N": "-> e | <- e, ee | -> s | <- se",
    "X1K": "<- s | ... | -> e, es | <- e, ee | -> s | <- se",
    "XK1": "<- s | ... | -> e | <- e, ee, es | -> s, se",
    "X1K1": "<- s | ... | -> e | <- e, ee, es | -> s | <- se",
    "X1X": "-> e | <- e, ee, s, es | -> s | <- se",
    "XX1": "-> e | <- e, ee, s | -> es, s, se",
    "X1X1": "-> e | <- e, ee, s | -> es, s | <- se",
    "K1N": "-> s | ... | -> e | <- e, ee | -> se",
    "K1K": "-> s | <- s | ... | -> e, es | <- e, ee | -> se",
    "KK1": "-> s | <- s | ... | -> e | <- e, ee, se, es",
    "K1K1": "-> s | <- s | ... | -> e | <- e, ee, es | -> se",
    "K1X": "-> s | ... | -> e | <- e, ee, s, es | -> se",
    "KX1": "-> s | ... | -> e | <- e, ee, se, s | -> es",
    "K1X1": "-> s | ... | -> e | <- e, ee, s | -> se, es",
    "I1N": "-> e, s | <- e, ee | -> se",
    "I1K": "<- s | ... | -> e, es, s | <- e, ee | -> se",
    "IK1": "<- s | ... | -> e, s | <- e, ee, se, es",
    "I1K1": "<- s | ... | -> e, s | <- e, ee, es | -> se",
    "I1X": "-> e, s | <- e, ee, s, es | -> se",
    "IX1": "-> e, s | <- e, ee, se, s | -> es",
    "I1X1": "-> e, s | <- e, ee, s | -> se, es",
}
_NAME: Final = re.compile(r"Noise_([A-Z0-9]+)((?:psk\d)(?:\+psk\d)*)?_(.+)")


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A handshake pattern with its modifiers applied.

    ``messages[i]`` is sent by the initiator when ``i`` is even, by the responder when odd.
    ``overheads[i]`` is the length of message ``i`` with an empty payload: its public keys,
    encrypted static keys and tags.
    """

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    overheads: tuple[int, ...]

    @property
    def psk_count(self) -> int:
        return sum(message.count("psk") for message in self.messages)

    @property
    def one_way(self) -> bool:
        """One-way patterns have one message; only the initiator may then send transport."""
        return len(self.messages) == 1


def _overheads(messages: tuple[tuple[str, ...], ...], psk_mode: bool) -> tuple[int, ...]:
    # Whether a key is set (and so whether "s" and the payload carry tags) is fixed by the
    # pattern: any DH or psk sets one, and so does "e" in psk mode (section 9.2).
    keyed = False
    result = []
    for tokens in messages:
        length = 0
        for token in tokens:
            if token == "e":
                length += DHLEN
                keyed = keyed or psk_mode
            elif token == "s":
                length += DHLEN + (TAGLEN if keyed else 0)
            else:
                keyed = True
        result.append(length + (TAGLEN if keyed else 0))
    return tuple(result)


@lru_cache(maxsize=64)
def pattern_from_name(protocol_name: str) -> HandshakePattern:
    """The pattern of a full protocol name such as ``Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b``.

    Raises ``ValueError`` for another suite, an unknown pattern or an unsupported modifier.
    """
    match = _NAME.fullmatch(protocol_name)
    if match is None or match[3] != _SUITE or match[1] not in _BASE_PATTERNS:
        raise ValueError(f"unsupported Noise protocol: {protocol_name!r}")
    lines = [line.strip() for line in _BASE_PATTERNS[match[1]].split("|")]
    split = lines.index("...") if "..." in lines else -1
    pre, messages = lines[: max(split, 0)], lines[split + 1 :]

    def tokens(line: str) -> list[str]:
        return [token.strip() for token in line[2:].split(",")]

    msgs = [tokens(line) for line in messages]
    modifiers = match[2].split("+") if match[2] else []
    for modifier in modifiers:
        position = int(modifier[3:])
        if position > len(msgs):
            raise ValueError(f"{modifier} does not fit pattern {match[1]} in {protocol_name!r}")
        if position == 0:
            msgs[0].insert(0, "psk")
        else:
            msgs[position - 1].append("psk")
    frozen = tuple(tuple(message) for message in msgs)
    return HandshakePattern(
        name=match[1] + (match[2] or ""),
        initiator_pre=tuple(t for line in pre if line.startswith("->") for t in tokens(line)),
        responder_pre=tuple(t for line in pre if line.startswith("<-") for t in tokens(line)),
        messages=frozen,
        overheads=_overheads(frozen, psk_mode=bool(modifiers)),
    )


# -- HandshakeState (section 5.3) ----------------------------------------------------------------


@final
class HandshakeState:
    """One side of a Noise handshake: write and read its messages in turn, then split.

    ``static`` and ``ephemeral`` are our key pairs, ``remote_static`` the peer's 32-byte public
    key when a pre-message makes it known in advance. ``ephemeral`` is for test vectors only:
    left ``None``, a fresh one is drawn when the pattern needs it.
    """

    __slots__ = (
        "_busy",
        "_e",
        "_index",
        "_initiator",
        "_pattern",
        "_psk_mode",
        "_psks",
        "_re",
        "_rs",
        "_s",
        "_sym",
        "_transport",
    )

    def __init__(
        self,
        pattern: HandshakePattern,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: KeyPair | None = None,
        remote_static: bytes | None = None,
        psks: Sequence[bytes] = (),
        ephemeral: KeyPair | None = None,
    ) -> None:
        """Raises ``ValueError`` if a key the pattern needs is missing or has the wrong size."""
        self._pattern = pattern
        self._initiator = initiator
        self._s = static
        self._e = ephemeral
        self._rs = None if remote_static is None else _check_key("the remote key", remote_static)
        self._re: bytes | None = None
        self._psks = [_check_key("a psk", psk) for psk in reversed(psks)]  # popped in order
        self._psk_mode = pattern.psk_count > 0
        self._index = 0
        self._busy = False  # left True by a message that raised: the state is half-updated
        self._transport: tuple[CipherState, CipherState] | None = None
        if len(psks) != pattern.psk_count:
            raise ValueError(f"pattern {pattern.name} needs {pattern.psk_count} psks")
        if self._s is None and "s" in _sent_tokens(pattern, initiator=initiator):
            raise ValueError(f"pattern {pattern.name} needs our static key")
        if self._rs is None and "s" in _pre_tokens(pattern, initiator=not initiator):
            raise ValueError(f"pattern {pattern.name} needs the remote static key")

        self._sym = SymmetricState(f"Noise_{pattern.name}_{_SUITE}".encode())
        self._sym.mix_hash(prologue)
        for key in self._pre_message_keys():
            self._sym.mix_hash(key)

    def _pre_message_keys(self) -> list[bytes]:
        # Only "s" can appear in the supported pre-messages; initiator's keys come first.
        ours, theirs = (None if self._s is None else self._s.public), self._rs
        initiator_key, responder_key = (ours, theirs) if self._initiator else (theirs, ours)
        keys = [initiator_key for _ in self._pattern.initiator_pre]
        keys += [responder_key for _ in self._pattern.responder_pre]
        return [key for key in keys if key is not None]

    @property
    def finished(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._transport is not None

    @property
    def message_index(self) -> int:
        """How many handshake messages have been written or read so far."""
        return self._index

    @property
    def our_turn(self) -> bool:
        """Whether the next handshake message is ours to write."""
        return (self._index % 2 == 0) == self._initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once a pre-message or a message has made it known."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """``h`` after the last message: unique to this session (channel binding).

        Raises ``RuntimeError`` before the handshake has finished.
        """
        if self._transport is None:
            raise RuntimeError("the handshake has not finished")
        return self._sym.h

    def transport_ciphers(self) -> tuple[CipherState, CipherState]:
        """Our (sending, receiving) CipherStates. Raises ``RuntimeError`` before the end.

        In a one-way pattern the responder must not use its sending CipherState.
        """
        if self._transport is None:
            raise RuntimeError("the handshake has not finished")
        c1, c2 = self._transport
        return (c1, c2) if self._initiator else (c2, c1)

    def _next_tokens(self, *, writing: bool) -> tuple[str, ...]:
        if self._busy:
            raise RuntimeError("an earlier message failed: this handshake must be discarded")
        if self._transport is not None:
            raise RuntimeError("the handshake has already finished")
        if self.our_turn != writing:
            raise RuntimeError(f"it is not our turn to {'write' if writing else 'read'}")
        self._busy = True
        return self._pattern.messages[self._index]

    def _advance(self) -> None:
        self._busy = False
        self._index += 1
        if self._index == len(self._pattern.messages):
            self._transport = self._sym.split()

    def _mix_dh(self, token: str) -> None:
        # The first letter names the initiator's key, the second the responder's.
        mine, theirs = (token[0], token[1]) if self._initiator else (token[1], token[0])
        local = self._e if mine == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        # Both exist: __init__ checked the pre-messages, and the pattern orders the tokens.
        assert local is not None
        assert remote is not None
        self._sym.mix_key(dh(local.private, remote))

    def write_message(self, payload: bytes) -> bytes:
        """Our next handshake message, carrying ``payload`` (encrypted once a key is set).

        Raises :class:`~qchan.AuthenticationError` if a DH with the peer's key fails (a
        low-order point), ``RuntimeError`` out of turn. After any exception, every later call
        raises ``RuntimeError``.
        """
        tokens = self._next_tokens(writing=True)
        sym = self._sym
        parts: list[bytes] = []
        for token in tokens:
            if token == "e":
                if self._e is None:
                    self._e = KeyPair.generate()
                parts.append(self._e.public)
                sym.mix_hash(self._e.public)
                if self._psk_mode:
                    sym.mix_key(self._e.public)
            elif token == "s":
                assert self._s is not None  # checked in __init__
                parts.append(sym.encrypt_and_hash(self._s.public))
            elif token == "psk":
                sym.mix_key_and_hash(self._psks.pop())
            else:
                self._mix_dh(token)
        parts.append(sym.encrypt_and_hash(payload))
        self._advance()
        return b"".join(parts)

    def read_message(self, message: Buffer) -> bytes:
        """Process the peer's next handshake message and return its decrypted payload.

        Raises :class:`~qchan.AuthenticationError` if the message is too short, fails
        authentication or carries a low-order public key; ``RuntimeError`` out of turn.
        After any exception, every later call raises ``RuntimeError``.
        """
        tokens = self._next_tokens(writing=False)
        data = _as_bytes(message)
        needed = self._pattern.overheads[self._index]
        if len(data) < needed:
            raise AuthenticationError(
                f"message too short: {len(data)} bytes, at least {needed} expected"
            )
        sym = self._sym
        offset = 0
        for token in tokens:
            if token == "e":
                self._re = data[offset : offset + DHLEN]
                offset += DHLEN
                sym.mix_hash(self._re)
                if self._psk_mode:
                    sym.mix_key(self._re)
            elif token == "s":
                end = offset + DHLEN + (TAGLEN if sym.cipher.has_key else 0)
                self._rs = sym.decrypt_and_hash(data[offset:end])
                offset = end
            elif token == "psk":
                sym.mix_key_and_hash(self._psks.pop())
            else:
                self._mix_dh(token)
        payload = sym.decrypt_and_hash(data[offset:])
        self._advance()
        return payload


def _pre_tokens(pattern: HandshakePattern, *, initiator: bool) -> tuple[str, ...]:
    """The pre-message tokens of the initiator (or of the responder)."""
    return pattern.initiator_pre if initiator else pattern.responder_pre


def _sent_tokens(pattern: HandshakePattern, *, initiator: bool) -> list[str]:
    """Every token the initiator (or the responder) sends, pre-messages included."""
    sent = pattern.messages[0 if initiator else 1 :: 2]
    return [*_pre_tokens(pattern, initiator=initiator), *(t for message in sent for t in message)]

"""What discovery says on the network and how it reads what others say (no zeroconf, no I/O).

A qchan node advertises one DNS-SD service of type ``_qchan._tcp.local.``: an instance name
made unique by the node's key fingerprint, its listener's port and addresses, and a TXT record::

    v=1               protocol version (records of any other version are ignored)
    c=<32 hex>        cluster tag: cluster_tag(cluster key); records of other clusters are ignored
    k=<64 hex>        the node's public key: whom to expect when dialling
    n=<node name>     for logs only (at most 200 bytes)

Everything in a record is a hint from an unauthenticated source. :func:`parse_announcement`
turns a record into an :class:`Announcement` or ``None`` (never an exception);
:class:`Candidates` keeps at most ``limit`` of them and says what changed for each key. The
handshake, with the key from the record as the expected key, decides whom a node admits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, final

from qchan.crypto.keys import ClusterKey, fingerprint

__all__ = [
    "SERVICE_TYPE",
    "Announcement",
    "Candidates",
    "Found",
    "Lost",
    "advertised_addresses",
    "cluster_tag",
    "encode_txt",
    "instance_label",
    "parse_announcement",
    "parse_txt",
]

log = logging.getLogger("qchan.discovery")

SERVICE_TYPE: Final = "_qchan._tcp.local."
VERSION: Final = b"1"
MAX_CANDIDATES: Final = 1024
MAX_ADDRESSES: Final = 8  # per record; a key claimed by several records gets at most twice that
_KEY_SIZE: Final = 32
_MAX_TXT_NAME: Final = 200
_TAG_LABEL: Final = b"qchan/1 mDNS cluster tag"
_HEX_KEY: Final = re.compile(rb"[0-9a-f]{64}")


def cluster_tag(cluster_key: ClusterKey) -> str:
    """The public tag of a cluster in mDNS records: 32 hex digits, stable for a given key.

    BLAKE2b keyed with the cluster key over a fixed label: anyone holding the key computes the
    same tag; the tag tells nothing about the key (nor, without it, which tag a key makes).
    """
    if not isinstance(cluster_key, ClusterKey):
        raise TypeError(f"cluster_tag() takes a qchan.ClusterKey, not {type(cluster_key).__name__}")
    return hashlib.blake2b(_TAG_LABEL, key=bytes(cluster_key), digest_size=16).hexdigest()


def instance_label(name: str, public_key: bytes) -> str:
    """The DNS-SD instance name of a node: its name, tidied for DNS, and its fingerprint.

    The fingerprint (80 bits of the key) makes it unique per node, so two nodes never contend
    for a name and no probing for conflicts is needed. At most 57 characters (a DNS label is 63).
    """
    tidy = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:40].rstrip("-") or "qchan"
    return f"{tidy}-{fingerprint(public_key).replace('-', '')}"


def encode_txt(name: str, public_key: bytes, tag: str) -> dict[bytes, bytes]:
    """The TXT properties a node advertises (each entry well under DNS's 255 bytes)."""
    printable = "".join(c if c.isprintable() else "?" for c in name)
    raw = printable.encode("utf-8")[:_MAX_TXT_NAME].decode("utf-8", "ignore") or "?"
    return {
        b"v": VERSION,
        b"c": tag.encode("ascii"),
        b"k": public_key.hex().encode("ascii"),
        b"n": raw.encode("utf-8"),
    }


def parse_txt(text: bytes) -> dict[bytes, bytes | None] | None:
    """A TXT record's ``key=value`` strings (RFC 6763 section 6), or ``None`` if malformed.

    Keys are compared case-insensitively (lowercased here); a key without ``=`` maps to
    ``None``. Truncated strings, empty keys and repeated keys make the record malformed: a
    record someone took the trouble to garble is not worth guessing at.
    """
    fields: dict[bytes, bytes | None] = {}
    pos = 0
    while pos < len(text):
        length = text[pos]
        item = text[pos + 1 : pos + 1 + length]
        pos += 1 + length
        if len(item) != length:
            return None
        if not item:
            continue  # an empty string is how DNS-SD spells an empty TXT record
        key, sep, value = item.partition(b"=")
        key = key.lower()
        if not key or key in fields:
            return None
        fields[key] = value if sep else None
    return fields


@final
@dataclass(frozen=True, slots=True)
class Announcement:
    """A well-formed record of our cluster: who claims to be where."""

    name: str
    key: bytes
    addresses: tuple[str, ...]  # "HOST:PORT" or "[V6]:PORT", at most MAX_ADDRESSES


def _ignored(why: str, *args: object) -> None:
    log.debug("ignoring an mDNS record: " + why, *args)


def parse_announcement(
    text: bytes,
    port: object,
    addresses: Iterable[object],
    *,
    tag: str,
    own_key: bytes,
) -> Announcement | None:
    """Check a record's TXT bytes, port and addresses; ``None`` unless all are usable.

    Records of another cluster or version, and our own, are ``None`` silently; malformed ones
    with a debug line. Unusable addresses (not an IP, multicast, unspecified) are dropped.
    """
    try:
        fields = parse_txt(bytes(text))
    except (TypeError, ValueError):
        fields = None
    if fields is None:
        _ignored("malformed TXT %r", text[:64] if isinstance(text, bytes) else type(text))
        return None
    if fields.get(b"v") != VERSION or fields.get(b"c") != tag.encode("ascii"):
        return None  # another protocol version or another cluster: not ours to judge
    key_hex = fields.get(b"k")
    if key_hex is None or not _HEX_KEY.fullmatch(key_hex):
        _ignored("public key %r is not 64 lowercase hex digits", key_hex)
        return None
    key = bytes.fromhex(key_hex.decode("ascii"))
    if key == own_key:
        return None
    try:
        name = (fields.get(b"n") or b"").decode("utf-8")
    except UnicodeDecodeError:
        name = ""
    if not 0 < len(name.encode("utf-8")) <= _MAX_TXT_NAME or not name.isprintable():
        _ignored("node name %r", fields.get(b"n"))
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 0xFFFF:
        _ignored("port %r", port)
        return None
    found = _addresses(addresses, port)
    if not found:
        _ignored("no usable address for %s", fingerprint(key))
        return None
    return Announcement(name, key, found)


def _addresses(candidates: Iterable[object], port: int) -> tuple[str, ...]:
    found: list[str] = []
    for candidate in candidates:
        if len(found) >= MAX_ADDRESSES:
            break
        try:
            ip = ipaddress.ip_address(str(candidate))
        except ValueError:
            continue
        if ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255"):
            continue
        if isinstance(ip, ipaddress.IPv6Address) and (ip.is_link_local or ip.scope_id):
            continue  # would need an interface scope that the record cannot vouch for
        text = f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"
        if text not in found:
            found.append(text)
    return tuple(found)


@final
@dataclass(frozen=True, slots=True)
class Found:
    """A node of our cluster is announced, or its announced addresses changed."""

    name: str
    key: bytes
    addresses: tuple[str, ...]


@final
@dataclass(frozen=True, slots=True)
class Lost:
    """No record announces this key any more."""

    key: bytes


@final
class Candidates:
    """The announced nodes of our cluster: at most ``limit`` records, by instance name.

    Several records may claim one key (a node seen on two interfaces, or a forger repeating a
    real node's key with its own address): the key's addresses are those of all its records,
    oldest record first, so a late forgery cannot push a real address out. A key is
    :class:`Lost` only when no record claims it. Once full, new records are ignored until old
    ones go: a flood of forged records costs a bounded table, not unbounded memory.
    """

    __slots__ = ("_by_instance", "_instances_of", "_limit", "_reported")

    def __init__(self, limit: int = MAX_CANDIDATES) -> None:
        self._limit = limit
        self._by_instance: dict[str, Announcement] = {}
        self._instances_of: dict[bytes, dict[str, None]] = {}  # key -> its instances, in order
        self._reported: dict[bytes, Found] = {}  # what the last Found said, per key

    def __len__(self) -> int:
        return len(self._by_instance)

    def __contains__(self, instance: object) -> bool:
        return instance in self._by_instance

    def instances(self) -> list[str]:
        return list(self._by_instance)

    def update(self, instance: str, announcement: Announcement | None) -> list[Found | Lost]:
        """Record what ``instance`` announces now (``None``: nothing, or nothing usable)."""
        old = self._by_instance.get(instance)
        if announcement is None:
            if old is None:
                return []
            del self._by_instance[instance]
        else:
            if old is None and len(self._by_instance) >= self._limit:
                log.debug("ignoring %s: already tracking %d candidates", instance, self._limit)
                return []
            self._by_instance[instance] = announcement
        if old is not None and (announcement is None or old.key != announcement.key):
            claims = self._instances_of[old.key]
            del claims[instance]
            if not claims:
                del self._instances_of[old.key]
        if announcement is not None:
            self._instances_of.setdefault(announcement.key, {})[instance] = None
        keys = [a.key for a in (old, announcement) if a is not None]
        return [event for key in dict.fromkeys(keys) if (event := self._change(key))]

    def _change(self, key: bytes) -> Found | Lost | None:
        claims = [self._by_instance[i] for i in self._instances_of.get(key, ())]
        if not claims:
            return Lost(key) if self._reported.pop(key, None) is not None else None
        addresses = dict.fromkeys(a for claim in claims for a in claim.addresses)
        found = Found(claims[0].name, key, tuple(addresses)[: 2 * MAX_ADDRESSES])
        if self._reported.get(key) == found:
            return None
        self._reported[key] = found
        return found


def advertised_addresses(
    listen_host: str, local_addresses: Sequence[str]
) -> tuple[list[str] | None, list[str]]:
    """Where to run mDNS and which addresses to advertise, for a listener on ``listen_host``.

    Returns ``(interfaces, addresses)``: ``interfaces`` is a list of interface IPs for
    zeroconf, or ``None`` for all of them; ``local_addresses`` are the host's own.

    - a loopback listener: mDNS on the loopback interface only (multicast is looped back, so
      nodes on this host find each other), advertising the listener's address;
    - a specific address: mDNS on that interface (IPv4) or on all (IPv6), advertising it;
    - a wildcard (``0.0.0.0``, ``::``) or a host name: mDNS everywhere, advertising every
      non-loopback, non-link-local address of the host (IPv4 only for ``0.0.0.0``), or the
      loopback address if there is no other.
    """
    try:
        ip = ipaddress.ip_address(listen_host)
    except ValueError:
        ip = ipaddress.IPv4Address("0.0.0.0")
    if ip.is_loopback:
        return ["127.0.0.1"], [ip.compressed]
    if not ip.is_unspecified:
        return ([ip.compressed] if ip.version == 4 else None), [ip.compressed]
    mine: list[str] = []
    for text in local_addresses:
        try:
            local = ipaddress.ip_address(text)
        except ValueError:
            continue
        if local.is_loopback or local.is_link_local or (ip.version == 4 and local.version == 6):
            continue
        if local.compressed not in mine:
            mine.append(local.compressed)
    return None, (mine[:MAX_ADDRESSES] or ["127.0.0.1"])

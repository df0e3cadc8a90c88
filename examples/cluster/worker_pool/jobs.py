"""The work of the worker-pool example: count the primes in a block of integers.

A job is ``[lo, hi)``; the answer is how many primes lie in it (a segmented sieve, a fraction of
a millisecond per block of 1,000). The blocks of ``0 .. N`` add up to the prime-counting
function, so the client can check the cluster's total against a known value.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["KNOWN_COUNTS", "blocks", "count_primes"]

#: pi(N), the number of primes below N, for checking totals.
KNOWN_COUNTS: Final = {
    100_000: 9_592,
    1_000_000: 78_498,
    2_000_000: 148_933,
    5_000_000: 348_513,
    10_000_000: 664_579,
}


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\0\0"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return [n for n, is_prime in enumerate(sieve) if is_prime]


def count_primes(block: tuple[int, int] | list[int]) -> int:
    """The number of primes ``p`` with ``lo <= p < hi``."""
    lo, hi = block
    if hi <= 2 or hi <= lo:
        return 0
    lo = max(lo, 2)
    sieve = bytearray([1]) * (hi - lo)
    for p in _small_primes(math.isqrt(hi - 1)):
        start = max(p * p, (lo + p - 1) // p * p)
        sieve[start - lo :: p] = bytes(len(range(start, hi, p)))
    return sum(sieve)


def blocks(total: int, size: int) -> list[tuple[int, int]]:
    """``[0, total)`` cut into blocks of ``size``."""
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)]

"""An independent reference of ``state_dtype``'s codes (``optlab.optim._lowp``'s specification).

Written from the module docstring of :mod:`optlab.optim._lowp` in numpy,
Python ints and float64, sharing no code with it: the "lowbias32" hash in
numpy uint32 arithmetic, the splitmix64 seed with Python ints, bf16
neighbours by bit manipulation of float32 values, the int8 block codes in
float64. Tests compare the optimizers' stored state with what these
functions compute; nothing here imports optlab.

Values are flat float64 numpy arrays; a stored moment is ``(codes, absmax)``
numpy arrays (``absmax`` ``None`` for bf16, whose codes are the bf16 values
as float32).
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 256  #: elements per int8 block
_U32 = np.uint32
_MASK64 = (1 << 64) - 1

# --------------------------------------------------------------------------
# Random bits.
# --------------------------------------------------------------------------


def lowbias32(x: np.ndarray) -> np.ndarray:
    """C. Wellons' "lowbias32" integer hash on uint32 arrays (products wrap modulo 2^32)."""
    x = np.asarray(x, dtype=_U32).copy()
    x ^= x >> _U32(16)
    x *= _U32(0x7FEB352D)
    x ^= x >> _U32(15)
    x *= _U32(0x846CA68B)
    x ^= x >> _U32(16)
    return x


def uniforms(count: int, seed_value: int, half: int = 0) -> np.ndarray:
    """``u_i = ((lowbias32(i XOR seed) >> 16 * half) & 0xFFFF) / 65536`` for ``i = 0 ..
    count-1`` (float64): a moment in slot ``k`` takes ``half = k % 2`` of the hash seeded
    for ``k // 2``."""
    index = np.arange(count, dtype=_U32)
    bits = lowbias32(index ^ _U32(seed_value)) >> _U32(16 * half)
    return (bits & _U32(0xFFFF)).astype(np.float64) / 65536.0


def _splitmix64_finalizer(z: int) -> int:
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z


#: The odd multipliers of the linear mix of (position, step, slot, part), in that order.
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def seed(position: int, step: int, slot: int, part: int = 0) -> int:
    """splitmix64's finalizer of the mix of the four integers, its low 31 bits."""
    mixed = sum(m * v for m, v in zip(_MIX, (position, step, slot, part), strict=True))
    return _splitmix64_finalizer(mixed & _MASK64) & 0x7FFFFFFF


def parts(numel: int) -> list[tuple[int, int]]:
    """The int8 parts of a flat tensor: its full blocks, then the shorter rest (those present)."""
    full = numel - numel % BLOCK
    return [(a, b) for a, b in ((0, full), (full, numel)) if b > a]


def part_seeds(fmt: str, numel: int, position: int, step: int, slot: int) -> list[int]:
    count = 1 if fmt == "bfloat16" else max(len(parts(numel)), 1)
    return [seed(position, step, slot, part) for part in range(count)]


# --------------------------------------------------------------------------
# bfloat16.
# --------------------------------------------------------------------------

_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)  # bf16 has float32's exponent range


def bf16_neighbours(magnitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lo <= a <= hi``: the bf16 values around float32 magnitudes ``a`` (float64 arrays).

    ``lo`` keeps the top 16 bits of ``a``'s float32 pattern, ``hi`` is the next
    pattern up (one bf16 spacing more, the next binade where the mantissa overflows).
    """
    bits = np.asarray(magnitude, dtype=np.float32).view(_U32)
    lo_bits = bits & _U32(0xFFFF0000)
    hi_bits = lo_bits + _U32(0x10000)
    return (
        lo_bits.view(np.float32).astype(np.float64),
        hi_bits.view(np.float32).astype(np.float64),
    )


def round_bf16(values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Stochastic rounding to bf16: up to ``hi`` iff ``u * (hi - lo) < |x| - lo`` (float32 values).

    ``values`` are first rounded to float32 (the optimizers compute in float32);
    the comparison is exact in float64. Returns the bf16 values as float64.
    """
    x = np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)
    a = np.abs(x)
    finite = np.isfinite(a)
    if np.any((a[finite] > 0) & (a[finite] < _SMALLEST_NORMAL)):
        raise ValueError("the reference covers normal magnitudes (and zero) only")
    lo, hi = bf16_neighbours(np.where(finite, a, 0.0))
    rounded = np.where(u * (hi - lo) < a - lo, hi, lo)
    rounded = np.where(finite, rounded, a)
    return np.where(x < 0, -rounded, rounded)


def bf16_ordinal(values: np.ndarray) -> np.ndarray:
    """bf16 values (exactly representable) as integers one apart for neighbouring values."""
    bits = (np.asarray(values, dtype=np.float32).view(_U32) >> _U32(16)).astype(np.int64)
    magnitude = bits & 0x7FFF
    return np.where(bits & 0x8000, -magnitude, magnitude)


# --------------------------------------------------------------------------
# int8 blocks.
# --------------------------------------------------------------------------


def _levels(kind: str) -> int:
    return 127 if kind == "signed" else 255


def encode_int8(
    values: np.ndarray, kind: str, seeds: list[int], half: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise codes (int64 array) and absmax (float64, one per block) of flat ``values``.

    signed: ``A = max |x|``, ``code = clip(floor(x * 127 / A + u), -127, 127)``;
    nonnegative: in the square-root domain, ``r = sqrt(x)``, ``A = max r``,
    ``code = clip(floor(r * 255 / A + u), 0, 255)``, at least 1 where ``x > 0``.
    ``A = 0`` stores zeros. ``u`` restarts at index 0 in each part, with its seed.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    codes = np.zeros(x.size, dtype=np.int64)
    absmax = np.zeros(-(-x.size // BLOCK), dtype=np.float64)
    levels = _levels(kind)
    for (start, stop), part_seed in zip(parts(x.size), seeds, strict=True):
        width = BLOCK if (stop - start) % BLOCK == 0 else stop - start
        u = uniforms(stop - start, part_seed, half).reshape(-1, width)
        block = x[start:stop].reshape(-1, width)
        coded = block if kind == "signed" else np.sqrt(np.maximum(block, 0.0))
        peak = np.abs(coded).max(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.where(peak > 0, coded * levels / peak, 0.0)
        low = -levels if kind == "signed" else 0
        code = np.clip(np.floor(scaled + u), low, levels)
        code = np.where(peak > 0, code, 0.0)
        if kind == "nonnegative":
            code = np.where(block > 0, np.maximum(code, 1.0), code)
        codes[start:stop] = code.reshape(-1).astype(np.int64)
        absmax[start // BLOCK : -(-stop // BLOCK)] = peak.reshape(-1)
    return codes, absmax


def decode_int8(codes: np.ndarray, absmax: np.ndarray, kind: str) -> np.ndarray:
    """The values of blockwise codes, in float64: ``code * A / 127``, or ``(code * A / 255)^2``."""
    codes = np.asarray(codes, dtype=np.float64).reshape(-1)
    scale = np.repeat(np.asarray(absmax, dtype=np.float64), BLOCK)[: codes.size]
    value = codes * scale / _levels(kind)
    return value if kind == "signed" else value * value


# --------------------------------------------------------------------------
# Either format.
# --------------------------------------------------------------------------


def encode(
    fmt: str, kind: str, values: np.ndarray, seeds: list[int], half: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """A moment stored in ``fmt``: bf16 values (float64) and ``None``, or int8 codes and absmax."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if fmt == "bfloat16":
        return round_bf16(flat, uniforms(flat.size, seeds[0], half)), None
    return encode_int8(flat, kind, seeds, half)


def moment_encode(
    fmt: str, kind: str, values: np.ndarray, position: int, step: int, slot: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`encode` of the moment in ``slot`` of the parameter at ``position`` after
    ``step``. bf16: the seeds of ``slot // 2``, half ``slot % 2`` of their hash (two
    moments share a hash); int8: the seeds of ``slot``, the low half."""
    pair, half = (slot // 2, slot % 2) if fmt == "bfloat16" else (slot, 0)
    seeds = part_seeds(fmt, np.asarray(values).size, position, step, pair)
    return encode(fmt, kind, values, seeds, half)


def decode(fmt: str, kind: str, codes: np.ndarray, absmax: np.ndarray | None) -> np.ndarray:
    if fmt == "bfloat16":
        return np.asarray(codes, dtype=np.float64).reshape(-1)
    return decode_int8(codes, absmax, kind)


def hoeffding_radius(samples: int, failure: float) -> float:
    """``eps`` with ``P(|mean - E| >= eps) <= failure`` for a mean of ``samples`` values in [0, 1]."""
    return math.sqrt(math.log(2 / failure) / (2 * samples))

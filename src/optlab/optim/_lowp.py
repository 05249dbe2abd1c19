r"""State in fewer bytes: moments kept in bfloat16 or as 8-bit blockwise codes.

An elementwise optimizer's group option ``state_dtype`` chooses how its
*moments* (the state keys its class lists in ``moment_kinds``: ``exp_avg``,
``exp_avg_sq``, ...; never ``step`` or an iterate such as Schedule-Free's
``z``) are stored between steps:

``None`` (the default)
    full precision, as before: the parameter's dtype, or float32 for
    fp16/bf16 parameters where the optimizer keeps float32 state.
``torch.bfloat16`` (or ``"bfloat16"``): 2 bytes a moment.
    Decoded exactly; the new value, computed in float32 (float64 for float64
    parameters, rounded to float32 for the store), is written back with
    *stochastic rounding*: to the nearer-above bf16 magnitude ``hi`` when
    ``u * (hi - lo) < |x| - lo``, else to ``lo`` (``lo <= |x| <= hi`` the two
    neighbouring bf16 magnitudes, ``u`` uniform on multiples of 2^-16 in
    [0, 1)), so ``E[round(x)] = x`` exactly for float32 ``x`` (subnormal
    ones included; done on the bit pattern, :func:`round_bf16`). NaN and
    infinities are kept; a magnitude above bf16's largest finite value
    rounds up to infinity with the probability the rule gives.
``"int8"``: 1 byte a moment plus a float32 scale per block of :data:`BLOCK`.
    The flattened moment is cut into blocks of :data:`BLOCK` consecutive
    elements (the last one shorter when the size is not a multiple); each
    block stores codes and its ``absmax`` ``A`` (under the key
    ``"<key>_absmax"``, shape ``(ceil(n / BLOCK),)``), in the manner of
    Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (ICLR
    2022), with a linear code and stochastic rounding instead of their
    dynamic map:

    - a *signed* moment (a first moment): ``A = max |x|``, ``code =
      clamp(floor(x * (127 / A) + u), -127, 127)`` (int8), value ``code *
      (A / 127)``;
    - a *nonnegative* moment (a second moment, a sum of squares): coded in
      the square-root domain, which keeps small values (the denominator
      ``sqrt(v)`` is what the update uses): ``r = sqrt(x)``, ``A = max r``,
      ``code = clamp(floor(r * (255 / A) + u), 0, 255)`` (uint8), raised to 1
      where ``x > 0`` (rounding never turns a positive second moment into a
      zero denominator), value ``(code * (A / 255))**2``.

    ``A = 0`` (an all-zero block) stores zeros.

The update always reads the decoded old moments and uses the new moments
*before* they are rounded (the parameter sees a full-precision update); only
what is stored for the next step is rounded. The fused kernel does all of
it in one pass over the tensors (int8: one loop over the blocks, a block's new
moments held in per-row buffers while its absmax is found and it is coded;
see ``_inductor.blockwise_fusion``).

Random bits are reproducible: element ``i`` (its flat index within its
*part*, see below) of the moment in slot ``k`` (its index in the rule's state
keys) gets ``u = ((hash32(i XOR s) >> (16 * h)) & 0xFFFF) / 65536``,
``hash32`` being the "lowbias32" integer hash (:func:`hash32`). For bf16 two
moments share one hash: ``h = k % 2`` (the low or the high 16 bits) and the
seed is that of ``k // 2``; for int8 ``h = 0`` and the seed is that of ``k``
(:func:`hash_half`, :func:`seed_slot`). The seed ``s`` is :func:`seed` of
the parameter's position in the optimizer (over all groups, in order), its
step count (after this step's increment; for an optimizer that keeps none,
SGD, Lion and Schedule-Free, its group's ``rounding_step``, counted per step and
saved with the group), that slot and the
part (0; for int8 the parts of the flattened moment are its full blocks
and a shorter last block, numbered in that order from 0 among those present,
and the indices restart at 0 in each). So a run resumed from a
checkpoint rounds exactly as the uninterrupted run, on any device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BLOCK",
    "FORMATS",
    "KINDS",
    "CompactStates",
    "absmax_key",
    "decode",
    "encode_into",
    "hash32",
    "parse_state_dtype",
    "random16",
    "round_bf16",
    "seed",
    "uniform",
]

#: Elements per int8 block (one float32 absmax each: 1/64 byte per element).
BLOCK = 256

#: The compact formats (``None``, the default, is full precision).
FORMATS = ("bfloat16", "int8")

#: What a moment is, for int8 coding: ``signed`` (linear) or ``nonnegative`` (square root).
KINDS = ("signed", "nonnegative")

# Constants the kernels use are written as literals in the functions: Dynamo
# makes a module-level float a graph input (a scalar argument), not a constant.
# 1.52587890625e-05 = 2^-16.


def parse_state_dtype(value: Any) -> str | None:
    """The canonical name of a ``state_dtype`` option: ``None``, ``"bfloat16"`` or ``"int8"``.

    Accepts ``None``, ``torch.bfloat16``, ``"bfloat16"``/``"bf16"`` and
    ``"int8"`` (also ``torch.int8``); raises ``ValueError`` naming the value
    and what is allowed otherwise.
    """
    if value is None:
        return None
    if value is torch.bfloat16 or value in ("bfloat16", "bf16"):
        return "bfloat16"
    if value is torch.int8 or value == "int8":
        return "int8"
    if value is torch.float32 or value in ("float32", "fp32"):
        raise ValueError(
            "state_dtype must be None (full precision, the default), torch.bfloat16 / "
            f"'bfloat16' or 'int8', got {value!r}; full precision is state_dtype=None"
        )
    raise ValueError(
        "state_dtype must be None (full precision, the default), torch.bfloat16 / "
        f"'bfloat16' or 'int8', got {value!r}"
    )


def absmax_key(key: str) -> str:
    """The state key of an int8 moment's per-block absmax."""
    return f"{key}_absmax"


def seed_slot(fmt: str, slot: int) -> int:
    """The slot argument of :func:`seed` for the moment in ``slot``: bf16 moments pair up
    (``slot // 2``: one hash serves two moments, a half each), int8 ones do not (their
    blocks are rounded in separate loops, where a shared hash would be kept in memory)."""
    return slot // 2 if fmt == "bfloat16" else slot


def hash_half(fmt: str, slot: int) -> int:
    """Which 16 bits of the hash the moment in ``slot`` takes (:func:`random16`)."""
    return slot % 2 if fmt == "bfloat16" else 0


# --------------------------------------------------------------------------
# Random bits: a counter-based hash, the same in eager code and in kernels.
# --------------------------------------------------------------------------

_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed 32-bit constant


def hash32(x: Tensor) -> Tensor:
    """The "lowbias32" hash (C. Wellons) on int32 tensors, arithmetic modulo 2^32.

    Logical shifts are written as arithmetic shifts masked to their width, and
    the products wrap as two's complement, so the bits equal the unsigned
    hash's on every backend.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def random16(like: Tensor, seed_value: Tensor | int, half: int = 0) -> Tensor:
    """int32 random bits in [0, 2^16), one per element of ``like`` (flat order): the low
    (``half`` 0) or high (``half`` 1) 16 bits of ``hash32(index XOR seed)``.

    Two bf16 moments of a parameter share one hash (one seed), a half each
    (:func:`seed_slot`, :func:`hash_half`): in a fused kernel the hash is then
    computed once per element (one hash per moment made a bf16 Adam step 2.6x
    slower on 2 cores, register spills included).
    """
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int32).view(like.shape)
    bits = hash32(index ^ seed_value)
    return (bits >> 16) & 0xFFFF if half else bits & 0xFFFF


def uniform(like: Tensor, seed_value: Tensor | int, half: int = 0) -> Tensor:
    """float32 ``u`` in [0, 1), multiples of 2^-16: :func:`random16` times 2^-16.

    Made on the bit pattern, exactly: the 16 bits as the top of a float32
    mantissa give ``1 + u`` (an int32 -> float32 conversion of a wide vector
    is scalarised by Inductor 2.13's CPU code: 32 ``vcvtsi2ss`` per vector
    pair, most of an int8 step's time).
    """
    bits = random16(like, seed_value, half)
    return ((bits << 7) | 0x3F800000).view(torch.float32) - 1.0


_MASK64 = (1 << 64) - 1


def seed(position: int, step: int, slot: int, part: int = 0) -> int:
    """The rounding seed of one moment of one parameter at one step, in [0, 2^31).

    splitmix64's finalizer of a linear mix of the four integers (see the
    module docstring for what each is).
    """
    z = (
        position * 0x9E3779B97F4A7C15
        + step * 0xBF58476D1CE4E5B9
        + slot * 0x94D049BB133111EB
        + part * 0xD6E8FEB86659FD93
    ) & _MASK64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & 0x7FFFFFFF


# --------------------------------------------------------------------------
# The codes. Plain torch ops: run eagerly, and traced into the fused kernels.
# --------------------------------------------------------------------------


def round_bf16(x: Tensor, bits: Tensor) -> Tensor:
    """``x`` (float32) stochastically rounded to bfloat16 with random ``bits`` (int32 in [0, 2^16)).

    On the bit pattern: ``x``'s low 16 bits ``low`` say where ``|x|`` lies
    between its bf16 neighbours (``|x| - lo = low * (hi - lo) / 2^16``, for
    normal and subnormal values alike), so adding ``0xFFFF - bits`` and
    truncating to the top 16 bits rounds up exactly when ``bits < low``, that
    is when ``u * (hi - lo) < |x| - lo`` with ``u = bits / 2^16``; the carry
    runs into the exponent where ``hi`` is the next binade (and into infinity
    above bf16's largest finite value). NaN stays NaN.
    """
    rounded = ((x.view(torch.int32) + (0xFFFF - bits)) & -65536).view(torch.float32)
    return torch.where(x != x, x, rounded).to(torch.bfloat16)  # x != x: NaN (isnan is scalarised)


def _quantize_blocks(x: Tensor, u: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Codes and absmax of a 2-D ``(blocks, width)`` float32 tensor, one block per row."""
    if kind == "signed":
        absmax = x.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(absmax > 0, 127.0 / absmax, 0.0)
        codes = torch.floor(x * scale + u).clamp(-127.0, 127.0).to(torch.int8)
    else:
        clamped = x.clamp(min=0.0)
        root = clamped.sqrt()
        # The largest root is the root of the largest value (sqrt is monotone and
        # correctly rounded, so bitwise): one square root a block, not two an element.
        absmax = clamped.amax(dim=-1, keepdim=True).sqrt()
        scale = torch.where(absmax > 0, 255.0 / absmax, 0.0)
        codes = torch.floor(root * scale + u).clamp(0.0, 255.0)
        codes = torch.where(x > 0, codes.clamp(min=1.0), codes).to(torch.uint8)
    return codes, absmax.squeeze(-1)


def _dequantize_blocks(codes: Tensor, absmax: Tensor, kind: str, dtype: torch.dtype) -> Tensor:
    step = absmax.to(dtype).unsqueeze(-1) * (1.0 / 127.0 if kind == "signed" else 1.0 / 255.0)
    value = codes.to(dtype) * step
    return value if kind == "signed" else value * value


def parts(numel: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the int8 parts of a flat tensor of ``numel``: the full blocks, the rest."""
    full = numel - numel % BLOCK
    return [(a, b) for a, b in ((0, full), (full, numel)) if b > a]


def _block_view(flat: Tensor, start: int, stop: int) -> Tensor:
    """``flat[start:stop]`` as ``(blocks, width)``: rows of BLOCK, or one row for a tail."""
    width = BLOCK if (stop - start) % BLOCK == 0 else stop - start
    return flat[start:stop].view(-1, width)


def decode(fmt: str, kind: str, codes: Tensor, absmax: Tensor | None, dtype: torch.dtype) -> Tensor:
    """A stored moment as a new tensor of ``dtype`` (the shape of ``codes``)."""
    if fmt == "bfloat16":
        return codes.to(dtype)
    flat_codes = codes.reshape(-1)
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    flat = out.view(-1)
    for start, stop in parts(codes.numel()):
        first, last = start // BLOCK, -(-stop // BLOCK)
        block = _dequantize_blocks(
            _block_view(flat_codes, start, stop), absmax[first:last], kind, dtype
        )
        flat[start:stop] = block.reshape(-1)
    return out


def encode_into(
    fmt: str,
    kind: str,
    value: Tensor,
    codes: Tensor,
    absmax: Tensor | None,
    seeds: Sequence[int],
    half: int = 0,
) -> None:
    """Round ``value`` into the stored ``codes`` (and ``absmax``), with one seed per part
    and the ``half`` of its hash the moment uses (:func:`random16`)."""
    flat_value = value.reshape(-1).to(torch.float32)
    if fmt == "bfloat16":
        bits = random16(flat_value, seeds[0], half)
        codes.copy_(round_bf16(flat_value, bits).view(codes.shape))
        return
    flat_codes = codes.view(-1)
    for (start, stop), part_seed in zip(parts(codes.numel()), seeds, strict=False):
        block = _block_view(flat_value, start, stop)
        new_codes, new_absmax = _quantize_blocks(block, uniform(block, part_seed, half), kind)
        flat_codes[start:stop] = new_codes.reshape(-1)
        absmax[start // BLOCK : -(-stop // BLOCK)] = new_absmax


def empty_state(fmt: str, kind: str, param: Tensor) -> tuple[Tensor, Tensor | None]:
    """Uninitialised storage for one moment of ``param`` in ``fmt``: codes, absmax (int8 only)."""
    if fmt == "bfloat16":
        return torch.empty(param.shape, dtype=torch.bfloat16, device=param.device), None
    dtype = torch.int8 if kind == "signed" else torch.uint8
    blocks = -(-param.numel() // BLOCK)
    return (
        torch.empty(param.shape, dtype=dtype, device=param.device),
        torch.empty(blocks, dtype=torch.float32, device=param.device),
    )


def compress(
    fmt: str, kind: str, value: Tensor, seeds: Sequence[int], half: int = 0
) -> tuple[Tensor, Tensor | None]:
    """``value`` (a full-precision moment) stored in ``fmt``: codes and absmax (int8 only)."""
    codes, absmax = empty_state(fmt, kind, value)
    encode_into(fmt, kind, value, codes, absmax, seeds, half)
    return codes, absmax


def stored_format(state: Mapping[str, Any], key: str) -> str | None:
    """The format a state's moment ``key`` is stored in (``None``: full precision)."""
    value = state.get(key)
    if not isinstance(value, Tensor):
        return None
    if value.dtype in (torch.int8, torch.uint8) and absmax_key(key) in state:
        return "int8"
    if value.dtype == torch.bfloat16:
        return "bfloat16"
    return None


class CompactStates(list):
    """One moment's stored tensors for a list of parameters, with how to read and write them.

    What the optimizer base class hands the fused kernel and the eager forms
    instead of a plain list of state tensors: the list holds the codes
    (bf16 tensors, or int8/uint8 codes), ``absmax`` the int8 blocks'
    scales, ``seeds[i]`` the per-part rounding seeds of parameter ``i``, ``slot``
    the moment's index among the rule's state keys (:func:`seed_slot`,
    :func:`hash_half`).
    """

    __slots__ = ("absmax", "fmt", "kind", "seeds", "slot")

    def __init__(
        self,
        codes: Iterable[Tensor],
        fmt: str,
        kind: str,
        absmax: list[Tensor] | None,
        seeds: list[tuple[int, ...]],
        slot: int = 0,
    ) -> None:
        super().__init__(codes)
        self.fmt, self.kind, self.absmax, self.seeds = fmt, kind, absmax, seeds
        self.slot = slot

    def decoded(self, index: int, dtype: torch.dtype) -> Tensor:
        absmax = None if self.absmax is None else self.absmax[index]
        return decode(self.fmt, self.kind, self[index], absmax, dtype)

    def store(self, index: int, value: Tensor) -> None:
        absmax = None if self.absmax is None else self.absmax[index]
        encode_into(
            self.fmt,
            self.kind,
            value,
            self[index],
            absmax,
            self.seeds[index],
            hash_half(self.fmt, self.slot),
        )


def part_seeds(fmt: str, numel: int, position: int, step: int, slot: int) -> tuple[int, ...]:
    """The seeds of a moment's parts (one for bf16; one per int8 part); ``slot`` is the
    seed's (:func:`seed_slot`), not the moment's."""
    count = 1 if fmt == "bfloat16" else max(len(parts(numel)), 1)
    return tuple(seed(position, step, slot, part) for part in range(count))


def compress_moment(
    fmt: str, kind: str, value: Tensor, position: int, step: int, slot: int
) -> tuple[Tensor, Tensor | None]:
    """:func:`compress` of the moment in ``slot`` (its index among the rule's state keys)
    of the parameter at ``position``, rounded with the seeds of ``step``."""
    seeds = part_seeds(fmt, value.numel(), position, step, seed_slot(fmt, slot))
    return compress(fmt, kind, value.float(), seeds, hash_half(fmt, slot))


_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93],
    dtype=np.uint64,
)


def seeds_of(
    fmt: str, numels: Sequence[int], positions: Sequence[int], steps: Sequence[int], slot: int
) -> list[tuple[int, ...]]:
    """:func:`part_seeds` of many parameters at once (numpy: uint64 arithmetic wraps as
    the mask does), one tuple per parameter: a compact step needs one per parameter and
    moment, about 1 us each through :func:`seed`."""
    count = len(numels)
    if count == 0:
        return []
    position = np.asarray(positions, dtype=np.uint64)
    step = np.asarray(steps, dtype=np.uint64)
    columns = []
    with np.errstate(over="ignore"):  # wrapping modulo 2^64 is the point
        base = position * _MIX[0] + step * _MIX[1] + np.uint64(slot) * _MIX[2]
        for part in range(1 if fmt == "bfloat16" else 2):
            z = base + np.uint64(part) * _MIX[3]
            z ^= z >> np.uint64(30)
            z *= _MIX[1]
            z ^= z >> np.uint64(27)
            z *= _MIX[2]
            z ^= z >> np.uint64(31)
            columns.append((z & np.uint64(0x7FFFFFFF)).tolist())
    if fmt == "bfloat16":
        return [(value,) for value in columns[0]]
    first, second = columns
    # Two parts (full blocks and a tail) only where both are present.
    return [
        (a, b) if numel > BLOCK and numel % BLOCK else (a,)
        for a, b, numel in zip(first, second, numels, strict=True)
    ]


# --------------------------------------------------------------------------
# Inside a fused kernel: one part of one moment (1-D for bf16; rows of blocks for int8).
# --------------------------------------------------------------------------


def kernel_decode(
    fmt: str, kind: str, codes: Tensor, absmax: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """A moment's stored part as ``dtype`` (int8: ``codes`` is ``(blocks, width)``)."""
    if fmt == "bfloat16":
        return codes.to(dtype)
    return _dequantize_blocks(codes, absmax, kind, dtype)


def kernel_store(
    fmt: str,
    kind: str,
    value: Tensor,
    codes: Tensor,
    absmax: Tensor | None,
    seed_value: Tensor,
    half: int = 0,
) -> None:
    """Round the new ``value`` of a moment's part into its storage (see :func:`kernel_decode`)."""
    value = value.to(torch.float32)
    if fmt == "bfloat16":
        codes.copy_(round_bf16(value, random16(value, seed_value, half)))
        return
    new_codes, new_absmax = _quantize_blocks(value, uniform(value, seed_value, half), kind)
    codes.copy_(new_codes)
    absmax.copy_(new_absmax)


def run_rule(
    rule: Any,
    arguments: list[Tensor | None],
    tensors: Sequence[Sequence[Tensor] | None],
    index: int,
    scalars: Any,
    flags: Mapping[str, Any],
) -> None:
    """``rule`` eagerly on parameter ``index``, its compact moments decoded and rounded back."""
    dtype = arguments[0].dtype
    compact = [(j, lists) for j, lists in enumerate(tensors) if isinstance(lists, CompactStates)]
    for j, lists in compact:
        arguments[j] = lists.decoded(index, dtype)
    rule(*arguments, scalars, **flags)
    for j, lists in compact:
        lists.store(index, arguments[j])

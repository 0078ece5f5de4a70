"""Compiled CPU kernel of the exact perturbed k-th largest (numba), one pass per row.

:func:`kth_draws` returns, for every row ``r`` of ``x (R, C)`` and draw ``b < B``, the value
and column of the k-th largest entry of ``x[r] + ε Z[b, r]`` with ``Z[b, r] ~ N(0, I_C)``:
the law of :func:`smoothtopk.ops._perturbed_kth_reference` (the readable definition, which
draws all ``B·R·C`` Gaussians), drawing only the Gaussians that can matter.

Algorithm, per row (rows in parallel, each with its own random stream):

1. *One pass over the row* (vectorised): the maxima of ``n = ⌊C/16⌋`` chunks of 16
   entries (chunk ``c`` holds the columns ``c + t·n``, strided so that the pass vectorises
   over ``c``); ``u`` = a value that at least ``k + 1`` and at most ``M + 1`` of them
   reach (``M`` a little above ``k``): the largest maximum that lies ``4ε`` below the
   k-th largest (peaked scores: few candidates), else the lowest such value. The
   "candidates" are the columns with ``x_j >= u``, found by reading only the chunks whose
   maximum reaches ``u``, and sorted by decreasing score (when few); every other class has
   ``x_j < u``. Rows shorter than ``16 (M + 2)`` take each class as its own chunk (when
   they hold at least ``3 (M + 2)`` classes and at most ``M + 1`` of them lie within
   ``1.5ε`` of their k-th largest score, so that few others can be proposed), or else
   make every column a candidate. ``u`` depends on the scores only. *Broad rows*, where
   at least ``M + 2`` chunk maxima lie within ``4ε`` of the row's largest score (ε large
   against the spread of the top scores, e.g. N(0, 1) scores with ε >= 0.3), skip this
   search: see the last point of step 3.
   So do short rows of at least ``2 (k + 24)`` classes with at least ``k + 24`` of them
   within ``4ε`` of the largest score and at least an eighth under the cut of step 3
   (e.g. C = 100, N(0, 1) scores, ε = 1: a fifth less time than drawing every Gaussian).
2. Per draw, the candidates' noise is drawn in full (every draw's at once, in one
   vectorised pass, when the ``B`` draws' Gaussians fit in ``C`` entries); ``T`` = the k-th
   largest perturbed candidate, kept with the k largest perturbed values seen so far (a
   sorted buffer, in torch.topk's order: the smaller column first among equal values).
   Beyond 48 candidates, only those reaching a floor enter the buffer: the smallest of
   the maxima of ``k`` slices of the draws, which at least ``k`` of them reach.
3. *Revealing the others lazily*: a non-candidate ``j`` changes the k largest only if
   ``x_j + εZ_j > T``, an event of probability ``p_j = Φ̄(a_j)``, ``a_j = (T − x_j)/ε``,
   independent of everything drawn so far. The non-candidates are visited in a fixed
   order (depending on the scores only) as trials at a *level* ``a_q`` shared by a
   stretch of them, below all their ``a_j``: each is proposed with probability
   ``q = Φ̄(a_q)``, so the number of failures before the next proposal is geometric(``q``)
   and only proposals cost work. A proposal at ``j`` draws ``W`` from the normal law
   truncated to ``(a_q, ∞)`` (exact rejection samplers) and is accepted when
   ``x_j + εW > T``: then ``W > a_j``, so the acceptance has probability ``p_j / q``
   (``q · p_j/q = p_j``) and an accepted ``W`` has the law of ``Z_j`` given
   ``Z_j > a_j``. An accepted ``j`` enters the buffer and ``T`` rises: later trials use
   the new ``T`` (each trial's probability depends only on what was drawn before it, so
   the trials stay exact).

   * Levels lie on a grid of step 1/64 over [−8, 10], with ``Φ̄``, ``1/log(1 − Φ̄)``, the
     truncated sampler's rate and its inverse tabulated: ``a_q`` is the grid point at least
     2⁻²⁰ below ``(T − top)/ε`` (``top`` >= the stretch's scores; 10 beyond the grid, −∞
     below it), a slack far above float rounding, so that ``x_j + εW > T`` implies
     ``W > a_q``. A geometric gap is ``⌊E / −log(1 − q)⌋``, ``E`` ~ Exp(1).
   * Common level, below ``(T − u)/ε``, over the columns in order (a proposal that falls
     on a candidate is discarded: its noise is drawn already).
   * When that would propose many columns (ε large against the spread of the scores, e.g.
     N(0, 1) scores with ε = 1), the row's non-candidates are first ordered by score in
     buckets of width ``ε/8`` below ``u`` (a counting sort, once per row): the level of a
     bucket is below ``(T − top of the bucket)/ε``, so that ``q`` is close to every ``p_j``
     in it, and the high buckets, visited first, raise ``T`` early. As the tops of the
     buckets lie 8 grid steps apart, bucket ``c``'s level is the grid point ``8c`` steps
     above that of ``(T − u)/ε`` (a table read, with twice the slack).
   * A broad row is ordered so from the outset, by buckets of width ``ε/8`` below the
     row's largest score (at most 128 buckets, so that the open-ended last one stays
     light), but only down to a *cut* ``2.5ε`` below that score (lower when fewer than
     ``k + 24`` classes reach it): the classes under the cut, "the rest", are listed in
     column order and revealed after the ordered ones, at the common level of ``x_j <
     cut``. Both lists come from one pass over the row, 16 columns at a time (a vector
     compress). When few classes lie under the cut (ε large against the spread of the
     scores) every class is ordered. When the rest would make more than 100 proposals
     over the row's remaining draws, its part above the score under which it would make
     half a proposal a draw is ordered too, once per row, and revealed before the others.
     Per draw, the first ``k + 24`` classes of the order play the candidates' part
     (step 2) and the rest of the order is revealed as above. Only those of the ``k + 24``
     perturbed values that reach a guess, the lowest of the first ``k`` scores, are kept
     (some 12 of them at ε = 1 on N(0, 1) scores), when at least ``k`` are (more than 99%
     of the draws there): they then hold the ``k`` largest. Else all are kept, and the
     row's later draws guess ``ε/2`` lower. The kept values are ranked by counting, for
     each, the kept values that beat it (no branch on the values), and the ``k`` first fill
     the buffer.
4. A non-candidate never proposed, or rejected, has ``x_j + εZ_j <= T`` for the ``T`` of its
   trial, which only rises; at least ``k`` revealed entries are ``>= T``. So the k largest
   of the row are the k largest revealed entries, and their k-th is the answer.

Exactness: every step samples the exact conditional law of the ``C`` perturbed scores
given what was revealed before, so (value, column) have the reference's law; **no class is
pruned**, there is no error bound to state beyond floating point. Values are computed
in float64 and returned in the dtype of ``x``. Rows holding a NaN or an infinity (in ``x``,
or in given draws) are drawn in full, with :func:`torch.topk`'s order (NaN above
everything).

Cost per row: one read of the row (plus a counting sort only when the common level is too
low, or, for a broad row, a pass that lists its classes above and under the cut and a
counting sort of those above), a Gaussian per candidate and draw, and ``O(proposals)``
work per draw. Memory: ``O(C)`` scratch per thread; nothing of size ``B·R·C``.

Random numbers: SplitMix64 (Steele, Lea, Flood, OOPSLA 2014) streams, one per row, keyed by
a seed drawn from the caller's :class:`torch.Generator` and the row index, so results depend
on the generator's state only (not on the number of threads). Gaussians and exponentials:
the 256-layer ziggurats of Marsaglia and Tsang (J. Stat. Softw., 2000), with Marsaglia's
tail method for the Gaussian; truncated Gaussians above ``a > 0``: Robert's exponential
rejection (Statistics and Computing, 1995), ``Z = a + E₁/λ`` accepted when
``E₂ >= (Z − λ)²/2`` (two exponentials, no logarithm), and plain rejection for ``a <= 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from smoothtopk._numba import JIT as _JIT
from smoothtopk._numba import JIT_ALLOCATING as _JIT_ALLOCATING
from smoothtopk._numba import parallel_threads

__all__ = ["kth_draws", "kth_draws_float64"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S8, _S11, _S27, _S30, _S31 = (np.uint64(s) for s in (8, 11, 27, 30, 31))
_BYTE, _BIT = np.uint64(255), np.uint64(1)
_TWO_M53 = 2.0**-53
_SQRT_HALF = math.sqrt(0.5)

#: Chunk length of the candidate search (step 1).
_CHUNK = 16
#: Fewer candidates when the k-th largest chunk maximum leads ``u`` by ``_GAP·ε`` (a
#: non-candidate then exceeds the k-th perturbed candidate with probability of order
#: ``Φ̄(_GAP)``): speed only.
_GAP = 4.0
#: Bisection steps of the threshold when many chunk maxima are close (speed only).
_BISECTIONS = 6
#: Candidates are sorted by score (insertion sort) when there are at most this many.
_SORTED_CANDIDATES = 48
#: Buckets of the score order (step 3): width ``ε · _BUCKET_WIDTH`` below ``u``, the last
#: one open-ended.
_BUCKET_WIDTH = 0.125
_N_BUCKETS = 64
#: Order the row in buckets when the common level would propose more than this fraction
#: of the row (a proposal costs some 50 ns, the counting sort some 3 ns a class).
_SORT_FRACTION = 1.0 / 32.0
#: Broad rows (many classes within ``_BROAD_SPREAD·ε`` of the row's largest score: at least
#: ``M + 2`` chunk maxima) are ordered by buckets from the outset, without the candidate
#: search, and their first ``k + _BROAD_FULL`` classes in that order are drawn in full.
_BROAD_SPREAD = 4.0
_BROAD_FULL = 24
#: Short rows (too few chunks for the search) of at least ``_SHORT_BROAD·(k + _BROAD_FULL)``
#: classes may be drawn as broad rows (:func:`_short_is_broad`); shorter ones are drawn in
#: full, as the head alone would hold half of them.
_SHORT_BROAD = 2
#: Short rows of at least ``_SHORT_SEARCH·(M + 2)`` classes search their candidates with
#: each class as its own chunk when at most ``M + 1`` classes lie within ``_SHORT_LEVEL·ε``
#: of the k-th largest score (speed only; else every class is a candidate, as the others
#: would make many proposals: at C = 100, N(0, 1) scores, ε = 3, the search cost 1.7x).
_SHORT_SEARCH = 3
_SHORT_LEVEL = 1.5
#: Of those, the perturbed values that reach a guess, at first the lowest of the first ``k``
#: scores, enter the buffer (when at least ``k`` do; after a draw where fewer did, the row's
#: guess falls by ``_HEAD_RETRY·ε``): speed only (a first guess ``ε/4`` lower ranked a
#: quarter more values, some 1.5% slower at ε = 1 on N(0, 1) scores).
_HEAD_RETRY = 0.5
#: Buckets of a broad row's order, below its largest score: twice as many as ``u`` needs, so
#: that the open-ended last one stays light (a heavy bucket serialises the counting sort).
#: Both counts stay below 255: bucket ids are uint8 (:func:`_bucket_order`).
_BROAD_BUCKETS = 2 * _N_BUCKETS
#: A broad row orders only its classes within ``_BROAD_DEPTH·ε`` of its largest score (at
#: least ``k + _BROAD_FULL`` of them); the others, "the rest", are revealed at one common
#: level over a list of their columns (speed only: at ε = 1 on N(0, 1) scores the rest holds
#: some 75% of the classes at C = 1081 and makes a median 1.4 proposals a draw, a mean 4.4
#: as rows whose largest score stands out make more; depths 2.25, 2.75, 3 and 3.5 ran 3%,
#: 6%, 7% and 15% slower there, 2 ran 9% slower).
_BROAD_DEPTH = 2.5
#: The whole row is ordered instead when fewer than ``1/_FEW_REST`` of a sample of its first
#: ``_REST_SAMPLE`` classes lie below that depth (ε large against the spread of the scores).
_FEW_REST = 8
_REST_SAMPLE = 512
#: When the rest would make more than this many proposals over the row's remaining draws
#: (at the current ``T``), the part of it above the level where it would make
#: ``_REST_TARGET`` a draw is ordered too, once per row (speed only).
_REST_EXTEND = 100.0
_REST_TARGET = 0.5

# Re-association only (no assumption about NaN or infinities): lets the chunk maxima of
# the candidate search vectorise.
_REASSOC = {"reassoc", "nsz", "contract"}

#: Whether LLVM has the register form of a vector compress (``llvm.experimental.vector.
#: compress``, LLVM 19 on): :func:`_split` then lists 16 columns at a time (AVX-512's
#: ``vpcompressd``; a generic sequence elsewhere). Older numba: one column at a time.
_VECTOR_COMPRESS = llvmlite.binding.llvm_version_info >= (19,)


def _ziggurat_tables(density: Callable[[float], float], inverse: Callable[[float], float],
                     r: float, area: float, layers: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Layer edges ``x`` (descending, ``x[layers] = 0``) and ``f(x)`` of the ziggurat of
    Marsaglia and Tsang (J. Stat. Softw. 2000) for the decreasing density ``f = density``
    on ``x > 0`` (``inverse`` its inverse; unnormalised, ``f(0) = 1``): layer 0 is the base
    strip (rectangle under ``f(r)`` plus the tail beyond ``r``), each layer has area
    ``area``."""
    x = np.zeros(layers + 1)
    x[0] = area / density(r)
    x[1] = r
    for i in range(1, layers - 1):
        x[i + 1] = inverse(area / x[i] + density(x[i]))
    return x, np.array([density(v) for v in x])


#: N(0, 1) (for |Z|; the sign comes from one more bit) and Exp(1), 256 layers each.
_ZIG_X, _ZIG_F = _ziggurat_tables(lambda x: math.exp(-0.5 * x * x),
                                  lambda y: math.sqrt(-2.0 * math.log(y)),
                                  3.6541528853610088, 0.00492867323399)
_ZIG_R = float(_ZIG_X[1])
_EXP_X, _EXP_F = _ziggurat_tables(lambda x: math.exp(-x), lambda y: -math.log(y),
                                  7.69711747013104972, 0.0039496598225815571993)
_EXP_R = float(_EXP_X[1])


@njit(inline="always", **_JIT)
def _mix(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(inline="always", **_JIT)
def _bits(state):
    """Next state of the SplitMix64 stream and 64 random bits."""
    state = state + _GAMMA
    return state, _mix(state)


@njit(inline="always", **_JIT)
def _uniform(state):
    """Next state and a uniform draw in (0, 1] (53 random bits)."""
    state, bits = _bits(state)
    return state, (float(bits >> _S11) + 1.0) * _TWO_M53


@njit(inline="always", **_JIT)
def _rectangle(bits):
    """The ziggurat's first step from 64 random bits (layer from 8, sign from 1, abscissa
    from 53): ``(z, i, sign)``, ``z`` accepted when ``z < x_{i+1}`` (inside the layer's
    rectangle under the curve)."""
    i = int(bits & _BYTE)
    sign = 1.0 - 2.0 * float((bits >> _S8) & _BIT)
    return float(bits >> _S11) * _TWO_M53 * _ZIG_X[i], i, sign


@njit(inline="always", **_JIT)
def _exponential(state):
    """An Exp(1) draw: the 256-layer ziggurat (layer from 8 random bits, abscissa from 53;
    beyond ``r``, ``r`` plus a fresh exponential)."""
    while True:
        state, bits = _bits(state)
        i = int(bits & _BYTE)
        e = float(bits >> _S11) * _TWO_M53 * _EXP_X[i]
        if e < _EXP_X[i + 1]:  # inside the layer's rectangle under the curve
            return state, e
        if i == 0:  # the tail beyond r: memoryless
            state, u = _uniform(state)
            return state, _EXP_R - math.log(u)
        state, u = _uniform(state)
        if _EXP_F[i] + u * (_EXP_F[i + 1] - _EXP_F[i]) < math.exp(-e):
            return state, e


@njit(inline="always", **_JIT)
def _normal(state):
    """A N(0, 1) draw: the 256-layer ziggurat."""
    state, bits = _bits(state)
    return _normal_from(state, bits)


@njit(**_JIT)
def _normals(state, out, bits):
    """``out[:]`` = N(0, 1) draws (``bits``: scratch of the same length): the first step of
    every draw from consecutive outputs of the stream, in a loop that vectorises, then the
    rare draws that leave their rectangle finished one by one (:func:`_normal_from`)."""
    n = out.shape[0]
    for i in range(n):  # SplitMix64's next n outputs
        bits[i] = _mix(state + np.uint64(i + 1) * _GAMMA)
    state = state + np.uint64(n) * _GAMMA
    rest = 0
    for i in range(n):
        z, layer, sign = _rectangle(bits[i])
        inside = z < _ZIG_X[layer + 1]
        out[i] = sign * z if inside else np.nan
        rest += not inside
    if rest > 0:
        for i in range(n):
            if out[i] != out[i]:
                state, out[i] = _normal_from(state, bits[i])
    return state


@njit(inline="always", **_JIT)
def _gaussians_at_once(state, n_samples, per_draw, gauss, bits):
    """The Gaussians of a row's ``n_samples`` draws, ``per_draw`` each, drawn at once into
    ``gauss`` (draw ``b``'s from ``b · per_draw`` on; :func:`_normals`, ``bits``: scratch as
    long) when they fit in it. Returns the stream's state and whether they did; if not,
    nothing is drawn and the caller draws them draw by draw."""
    n = n_samples * per_draw
    if n > gauss.shape[0]:
        return state, False
    return _normals(state, gauss[:n], bits[:n]), True


@njit(inline="always", **_JIT)
def _perturbed_values(state, b, r, x, cols, n, eps, perturbed, given, batched, gauss, out,
                      bits):
    """``out[:n]`` = draw ``b``'s perturbed values of the ``n`` classes ``cols[:n]`` of row
    ``r``, scores ``x[:n]``: read from the given draws (``perturbed``), or ``x + εZ`` with
    ``Z`` from ``gauss`` (every draw's at once, :func:`_gaussians_at_once`, when
    ``batched``) or drawn now (:func:`_normals`, ``bits``: scratch of ``n``). Returns the
    stream's state."""
    if given:
        for i in range(n):
            out[i] = float(perturbed[b, r, cols[i]])
    elif batched:
        for i in range(n):
            out[i] = x[i] + eps * gauss[b * n + i]
    else:
        state = _normals(state, out[:n], bits[:n])
        for i in range(n):
            out[i] = x[i] + eps * out[i]
    return state


@njit(inline="always", **_JIT)
def _normal_from(state, bits):
    """The ziggurat's draw whose first 64 bits are ``bits`` (more from the stream when it
    needs them)."""
    while True:
        z, i, sign = _rectangle(bits)
        if z < _ZIG_X[i + 1]:  # inside the layer's rectangle under the curve
            return state, sign * z
        if i == 0:  # the tail beyond r (Marsaglia, 1964)
            while True:
                state, u1 = _uniform(state)
                state, u2 = _uniform(state)
                a = -math.log(u1) / _ZIG_R
                if -2.0 * math.log(u2) > a * a:
                    return state, sign * (_ZIG_R + a)
        state, u = _uniform(state)
        if _ZIG_F[i] + u * (_ZIG_F[i + 1] - _ZIG_F[i]) < math.exp(-0.5 * z * z):
            return state, sign * z
        state, bits = _bits(state)  # rejected: a new draw


@njit(inline="always", **_JIT)
def _normal_above(state, a, rate, inv_rate):
    """A draw of Z ~ N(0, 1) conditioned on Z > a (``a = −∞``: unconditioned); ``rate``
    (used for ``a > 0``, with ``inv_rate = 1/rate``): ``λ = (a + √(a² + 4))/2``, the rate
    of Robert's exponential proposal ``Z = a + E₁/λ``, accepted with probability
    ``exp(−(Z − λ)²/2)``, i.e. when an exponential ``E₂ >= (Z − λ)²/2``."""
    if a <= 0.0:  # plain rejection: acceptance P(Z > a) >= 1/2
        while True:
            state, z = _normal(state)
            if z > a:
                return state, z
    while True:  # Robert (1995): acceptance >= 0.76
        state, e1 = _exponential(state)
        z = a + e1 * inv_rate
        state, e2 = _exponential(state)
        if e2 >= 0.5 * (z - rate) ** 2:
            return state, z


def _grid(lo: float = -8.0, hi: float = 10.0, per_unit: int = 64):
    """Levels ``a_i = lo + i/per_unit`` of the trials' proposals, with ``Φ̄(a_i)``,
    ``1/log(1 − Φ̄(a_i))``, the rate of Robert's sampler above ``a_i`` and its inverse
    (multiplications in the draws instead of divisions)."""
    grid = lo + np.arange(int((hi - lo) * per_unit) + 1) / per_unit
    tail = np.array([0.5 * math.erfc(a * _SQRT_HALF) for a in grid])
    rate = 0.5 * (grid + np.sqrt(grid * grid + 4.0))
    return grid, tail, 1.0 / np.log1p(-tail), rate, 1.0 / rate


_GRID_LO, _GRID_HI, _GRID_PER_UNIT = -8.0, 10.0, 64.0
_GRID_A, _GRID_TAIL, _GRID_INV_LOG_FAIL, _GRID_RATE, _GRID_INV_RATE = _grid(
    _GRID_LO, _GRID_HI, int(_GRID_PER_UNIT))
#: A proposal level lies at least this far below the threshold it serves (float slack).
_GRID_SLACK = 2.0**-20
#: Grid points between the levels of consecutive buckets (:func:`_bucket_level`): the tops
#: of the buckets lie ``ε·_BUCKET_WIDTH`` apart, a whole number of grid steps.
_BUCKET_STEPS = round(_BUCKET_WIDTH * _GRID_PER_UNIT)
assert _BUCKET_STEPS == _BUCKET_WIDTH * _GRID_PER_UNIT


@njit(inline="always", **_JIT)
def _grid_index(a):
    """The index of the largest grid point ``<= a − 2⁻²⁰`` (the grid's last, 10, beyond
    it), or −1 below the grid or for a NaN."""
    if not a >= _GRID_LO + _GRID_SLACK:
        return -1
    i = _GRID_A.shape[0] - 1
    if a < _GRID_HI:
        i = int((a - _GRID_LO) * _GRID_PER_UNIT)
    while _GRID_A[i] > a - _GRID_SLACK:  # near a grid point: the one below
        i -= 1
    return i


@njit(inline="always", **_JIT)
def _level_at(i):
    """The level of :func:`_level` at grid index ``i``, or that of ``a_q = −∞`` for
    ``i < 0``."""
    if i < 0:  # every trial is a proposal of an unconditioned Z
        return 1.0, -0.0, -np.inf, 0.0, 0.0
    return (_GRID_TAIL[i], _GRID_INV_LOG_FAIL[i], _GRID_A[i], _GRID_RATE[i],
            _GRID_INV_RATE[i])


@njit(inline="always", **_JIT)
def _level(a):
    """The proposal level of trials whose thresholds ``(T − x_j)/ε`` are all ``>= a``, as a
    tuple ``(q, 1/log(1 − q), a_q, rate, 1/rate)`` with ``a_q`` the largest grid point
    ``<= a − 2⁻²⁰`` (:func:`_grid_index`; ``−∞`` below the grid or for a NaN),
    ``q = Φ̄(a_q)`` and Robert's rate above ``a_q`` (:func:`_normal_above`)."""
    return _level_at(_grid_index(a))


@njit(inline="always", **_JIT)
def _geometric(state, level, limit):
    """Failures before the first success of Bernoulli(q) trials at a ``level`` of
    :func:`_level`, as a float: ``⌊E / −log(1 − q)⌋`` with ``E`` ~ Exp(1); ``inf`` when they
    reach ``limit``."""
    q, inv_log_fail = level[0], level[1]
    if q >= 1.0:
        return state, 0.0
    if not q > 0.0:
        return state, np.inf
    state, e = _exponential(state)
    gap = -e * inv_log_fail
    if gap >= limit:
        return state, np.inf
    return state, np.floor(gap)  # float: may exceed int64


@njit(inline="always", **_JIT)
def _beats(v, j, value, col):
    """Whether entry ``(v, j)`` ranks above ``(value, col)`` in torch.topk's order of finite
    values: the larger value, the smaller column among equal values."""
    return v > value or (v == value and j < col)


@njit(inline="always", **_JIT)
def _insert(top_val, top_col, k, v, j):
    """Insert ``(v, j)`` into the buffer of the k best, descending: it beats the k-th,
    which drops out (or the buffer holds only ``k − 1`` entries yet)."""
    i = k - 1
    while i > 0 and _beats(v, j, top_val[i - 1], top_col[i - 1]):
        top_val[i] = top_val[i - 1]
        top_col[i] = top_col[i - 1]
        i -= 1
    top_val[i] = v
    top_col[i] = j


@njit(fastmath=_REASSOC, **_JIT)
def _largest(vals, lo, hi):
    """The largest of ``vals[lo:hi]`` (vectorised)."""
    best = -np.inf
    for i in range(lo, hi):
        best = max(best, vals[i])
    return best


@njit(inline="always", **_JIT)
def _slice_floor(vals, n, parts):
    """The smallest of the maxima of ``parts`` slices of ``vals[:n]`` (``n >= parts``, as
    equal as integers allow), which at least ``parts`` entries reach (vectorised passes)."""
    floor = np.inf
    for s in range(parts):
        floor = min(floor, _largest(vals, s * n // parts, (s + 1) * n // parts))
    return floor


@njit(**_JIT)
def _select_many(vals, cols, n, k, top_val, top_col, picked):
    """``top_val[:k]``, ``top_col[:k]`` = the ``k`` best of the ``n >= k`` entries
    ``(vals[i], cols[i])`` in torch.topk's order of finite values, for many entries: only
    those that reach a floor are inserted, the smallest of the maxima of ``k`` slices of
    the entries, which at least ``k`` entries reach (the floor and the list of those
    entries are vectorised, without a branch per entry; ``picked``: scratch of ``n``
    columns)."""
    floor = _slice_floor(vals, n, k)
    for i in range(k):
        top_val[i] = -np.inf
        top_col[i] = np.iinfo(np.int64).max  # below every entry in torch.topk's order
    _insert_listed(vals, cols, picked, _list_reaching(vals, n, floor, picked), k, top_val,
                   top_col)


@njit(inline="always", **_JIT)
def _list_reaching(vals, n, floor, picked):
    """``picked[:count]`` = the positions ``i < n`` where ``vals[i] >= floor``, in order,
    listed without a branch per entry; returns ``count``."""
    count = 0
    for i in range(n):
        picked[count] = i
        count += vals[i] >= floor
    return count


@njit(inline="always", **_JIT)
def _insert_listed(vals, cols, picked, count, k, top_val, top_col):
    """The entries ``(vals[i], cols[i])``, ``i`` in ``picked[:count]``, inserted into the
    buffer of the k best (:func:`_insert`) when they beat its k-th."""
    for t in range(count):
        i = picked[t]
        if _beats(vals[i], cols[i], top_val[k - 1], top_col[k - 1]):
            _insert(top_val, top_col, k, vals[i], cols[i])


@njit(inline="always", **_JIT)
def _above(a, b):
    """torch.topk's order: NaN above everything, then the usual order."""
    return a > b or (a != a and b == b)


def _splat(builder: ir.IRBuilder, vector: ir.VectorType, value: ir.Value) -> ir.Value:
    """``value`` in every lane of a ``vector``."""
    i32 = ir.IntType(32)
    first = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(i32, 0))
    lanes = ir.Constant(ir.VectorType(i32, vector.count), [0] * vector.count)
    return builder.shuffle_vector(first, ir.Constant(vector, None), lanes)


def _compressed(builder: ir.IRBuilder, values: ir.Value, mask: ir.Value) -> ir.Value:
    """The lanes of ``values`` where ``mask`` holds, moved to the front, in order."""
    name = f"llvm.experimental.vector.compress.v{values.type.count}i32"
    try:
        compress = builder.module.get_global(name)
    except KeyError:
        compress = ir.Function(builder.module, ir.FunctionType(
            values.type, [values.type, mask.type, values.type]), name=name)
    return builder.call(compress, [values, mask, ir.Constant(values.type, None)])


def _store_lanes(builder: ir.IRBuilder, context, array_type, array: ir.Value, at: ir.Value,
                 values: ir.Value) -> None:
    """The lanes of ``values`` stored from ``array[at]`` on (unaligned)."""
    data = context.make_array(array_type)(context, builder, array).data
    target = builder.bitcast(builder.gep(data, [at]), values.type.as_pointer())
    builder.store(values, target, align=1)


def _lanes_set(builder: ir.IRBuilder, mask: ir.Value) -> ir.Value:
    """How many lanes of a 16-lane ``mask`` hold, as an int64."""
    bits = builder.bitcast(mask, ir.IntType(16))
    popcount = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(16)])
    return builder.zext(builder.call(popcount, [bits]), ir.IntType(64))


@intrinsic
def _split16(typingctx, row_t, start_t, lo_t, hi_t, band_t, at_t, below_t, below_at_t):
    """Columns ``start`` to ``start + 15`` of ``row``: those with ``lo <= x < hi`` stored
    from ``band[at]`` on, those with ``x < lo`` from ``below[below_at]`` on, in order
    (16 lanes written each time: 16 entries of slack); returns the two new ends. ``lo``,
    ``hi``: values of the row's dtype (compared in it)."""
    sig = types.UniTuple(types.int64, 2)(row_t, types.int64, types.float64, types.float64,
                                         band_t, types.int64, below_t, types.int64)

    def codegen(context, builder, signature, args):
        row, start, lo, hi, band, at, below, below_at = args
        element = context.get_data_type(signature.args[0].dtype)
        lanes = ir.VectorType(element, 16)
        columns_type = ir.VectorType(ir.IntType(32), 16)
        data = context.make_array(signature.args[0])(context, builder, row).data
        values = builder.load(builder.bitcast(builder.gep(data, [start]), lanes.as_pointer()),
                              align=1)
        if not isinstance(element, ir.DoubleType):  # exact: values of the row's dtype
            lo, hi = builder.fptrunc(lo, element), builder.fptrunc(hi, element)
        reach = builder.fcmp_ordered(">=", values, _splat(builder, lanes, lo))
        in_band = builder.and_(reach, builder.fcmp_ordered("<", values,
                                                           _splat(builder, lanes, hi)))
        under = builder.fcmp_ordered("<", values, _splat(builder, lanes, lo))
        first = _splat(builder, columns_type, builder.trunc(start, ir.IntType(32)))
        columns = builder.add(first, ir.Constant(columns_type, list(range(16))))
        _store_lanes(builder, context, signature.args[4], band, at,
                     _compressed(builder, columns, in_band))
        _store_lanes(builder, context, signature.args[6], below, below_at,
                     _compressed(builder, columns, under))
        ends = [builder.add(at, _lanes_set(builder, in_band)),
                builder.add(below_at, _lanes_set(builder, under))]
        return context.make_tuple(builder, signature.return_type, ends)

    return sig, codegen


@njit(**_JIT)
def _split_columns(row, lo, hi, band, below, start):
    """:func:`_split` from column ``start`` on, one column at a time, without a branch per
    column."""
    at = below_at = 0
    lo_x, hi_x = row.dtype.type(lo), row.dtype.type(hi)
    for j in range(start, row.shape[0]):
        band[at] = j
        below[below_at] = j
        at += (row[j] >= lo_x) & (row[j] < hi_x)
        below_at += row[j] < lo_x
    return at, below_at


@njit(**_JIT)
def _split_vector(row, lo, hi, band, below):
    """:func:`_split` 16 columns at a time (:func:`_split16`), the last ``C mod 16`` one at
    a time."""
    full = row.shape[0] // 16 * 16
    at = below_at = 0
    for start in range(0, full, 16):
        at, below_at = _split16(row, start, lo, hi, band, at, below, below_at)
    more, more_below = _split_columns(row, lo, hi, band[at:], below[below_at:], full)
    return at + more, below_at + more_below


@njit(**_JIT)
def _split_serial(row, lo, hi, band, below):
    """:func:`_split` one column at a time."""
    return _split_columns(row, lo, hi, band, below, 0)


#: ``_split(row, lo, hi, band, below)``: ``band[:n]`` = the columns with ``lo <= x_j < hi``,
#: ``below[:m]`` = those with ``x_j < lo``, both in increasing order; returns ``(n, m)``.
#: ``lo``, ``hi``: values of the row's dtype (``hi`` may be ∞), the row finite; ``band`` and
#: ``below``: uint32, 16 entries longer than the row. 16 columns at a time with
#: :data:`_VECTOR_COMPRESS` (chosen here, so that older LLVM never compiles the intrinsic).
_split = _split_vector if _VECTOR_COMPRESS else _split_serial


@njit(fastmath=_REASSOC, **_JIT)
def _chunk_tops(row, tops):
    """``tops[c]`` = maximum of the chunk ``c`` (columns ``c + t·n``, ``t < 16``, for
    ``n = len(tops)`` chunks), NaN when the chunk holds a NaN or an infinity; strided chunks
    so that the loop over ``c`` vectorises, each chunk's maximum kept in a register."""
    n = tops.shape[0]
    zero = row.dtype.type(0)  # the row's dtype: no conversion to float64
    for c in range(n):
        top = row[c]
        check = row[c] * zero  # NaN iff a NaN or an infinity
        for t in range(1, _CHUNK):
            v = row[t * n + c]
            top = max(top, v)
            check += v * zero
        tops[c] = top + check


@njit(fastmath=_REASSOC, **_JIT)
def _all_numbers(tops):
    """Whether no entry is NaN (vectorised)."""
    bad = 0
    for c in range(tops.shape[0]):
        bad += tops[c] != tops[c]
    return bad == 0


@njit(fastmath=_REASSOC, **_JIT)
def _draws_finite(perturbed, r):
    """Whether the given draws of row ``r`` hold no NaN and no infinity (vectorised)."""
    check = 0.0  # NaN iff a NaN or an infinity
    for b in range(perturbed.shape[0]):
        for j in range(perturbed.shape[2]):
            check += perturbed[b, r, j] * 0
    return check == 0.0


@njit(fastmath=_REASSOC, **_JIT)
def _count_from(tops, u):
    """How many entries are ``>= u`` (vectorised)."""
    count = 0
    for c in range(tops.shape[0]):
        count += tops[c] >= u
    return count


@njit(fastmath=_REASSOC, **_JIT)
def _largest_below(tops, cap):
    """The largest entry ``<= cap`` (−∞ when none). Four running maxima over interleaved
    entries: the compiler does not vectorise a maximum that must respect NaN, and a
    single running one waits on each comparison."""
    n = tops.shape[0]
    b0 = b1 = b2 = b3 = -np.inf
    c = 0
    while c + 4 <= n:
        v0, v1 = float(tops[c]), float(tops[c + 1])
        v2, v3 = float(tops[c + 2]), float(tops[c + 3])
        b0 = max(b0, v0 if v0 <= cap else -np.inf)
        b1 = max(b1, v1 if v1 <= cap else -np.inf)
        b2 = max(b2, v2 if v2 <= cap else -np.inf)
        b3 = max(b3, v3 if v3 <= cap else -np.inf)
        c += 4
    while c < n:
        v = float(tops[c])
        b0 = max(b0, v if v <= cap else -np.inf)
        c += 1
    return max(max(b0, b1), max(b2, b3))


@njit(fastmath=_REASSOC, **_JIT)
def _smallest(tops):
    """The smallest entry (vectorised)."""
    least = np.inf
    for c in range(tops.shape[0]):
        least = min(least, float(tops[c]))
    return least


@njit(inline="always", **_JIT)
def _rank(vals, n, i):
    """How many of ``vals[:n]`` rank above ``vals[i]``: the larger values, and the earlier
    entries among equal values (so the ranks of ``vals[:n]`` are ``0, 1, …, n − 1``).
    Counted without a branch on the values (vectorised)."""
    v = vals[i]
    rank = 0
    for t in range(n):
        rank += (vals[t] > v) | ((vals[t] == v) & (t < i))
    return rank


@njit(inline="always", **_JIT)
def _ranks(vals, keys, n, padded, ranks):
    """``ranks[i]`` = how many of ``vals[:n]`` rank above ``vals[i]``, for every ``i < n``
    at once: the larger values, and among equal values the earlier entries (``keys`` None:
    :func:`_rank`'s order) or those with smaller keys (``keys[:n]`` distinct); the ranks are
    ``0, 1, …, n − 1``. ``vals[n:padded]`` −∞ (:func:`_pad`), ``keys[n:padded]`` and
    ``ranks[n:padded]`` scratch. Each entry adds one to the rank of every entry it beats, a
    count vectorised over ``i`` in full vector steps, with no sum across a vector, where
    one :func:`_rank` per entry ends on such a sum. numba compiles the two cases apart:
    the chunk maxima's ranks (``keys`` None) load no keys."""
    for i in range(padded):
        ranks[i] = 0
    for t in range(n):
        v = vals[t]
        if keys is None:
            for i in range(padded):
                ranks[i] += (v > vals[i]) | ((v == vals[i]) & (t < i))
        else:
            key = keys[t]
            for i in range(padded):
                ranks[i] += (v > vals[i]) | ((v == vals[i]) & (key < keys[i]))


@njit(inline="always", **_JIT)
def _pad(vals, n):
    """``vals[n:]`` up to the next multiple of 8 (capped at ``len(vals)``) set to −∞, which
    beats no finite entry: :func:`_rank` over that length then gives the finite entries of
    ``vals[:n]`` the same ranks, in full vector steps with no scalar remainder. Returns
    that length."""
    padded = min((n + 7) // 8 * 8, vals.shape[0])
    for t in range(n, padded):
        vals[t] = -np.inf
    return padded


@njit(fastmath=_REASSOC, **_JIT)
def _eight_floor(tops):
    """The second smallest (counting ties) of the maxima of the 8 interleaved slices of
    ``tops`` (entries ``c`` with ``c mod 8 = s``, the last ``len mod 8`` entries in slice 0;
    at least 8 entries, no NaN): at least 7 entries reach it, and fewer than the smallest
    maximum would let through. One pass with 8 running maxima, where ``k + 1`` slices need
    one pass each."""
    n = tops.shape[0]
    b0, b1, b2, b3 = float(tops[0]), float(tops[1]), float(tops[2]), float(tops[3])
    b4, b5, b6, b7 = float(tops[4]), float(tops[5]), float(tops[6]), float(tops[7])
    c = 8
    while c + 8 <= n:
        b0 = max(b0, float(tops[c]))
        b1 = max(b1, float(tops[c + 1]))
        b2 = max(b2, float(tops[c + 2]))
        b3 = max(b3, float(tops[c + 3]))
        b4 = max(b4, float(tops[c + 4]))
        b5 = max(b5, float(tops[c + 5]))
        b6 = max(b6, float(tops[c + 6]))
        b7 = max(b7, float(tops[c + 7]))
        c += 8
    while c < n:
        b0 = max(b0, float(tops[c]))
        c += 1
    least = min(min(min(b0, b1), min(b2, b3)), min(min(b4, b5), min(b6, b7)))
    above = np.inf  # the smallest maximum above the least, unless the least is tied
    ties = 0
    for v in (b0, b1, b2, b3, b4, b5, b6, b7):
        above = min(above, v if v > least else np.inf)
        ties += v == least
    return least if ties >= 2 else above


@njit(inline="always", **_JIT)
def _select_largest(tops, k, select, kept, ranks):
    """``select[:k + 1]`` = the ``k + 1`` largest entries of ``tops`` (more than ``k``, no
    NaN), descending; ``select`` holds ``k + 2`` entries, the last a sink.

    Only the entries that reach a floor are ranked: the smallest of the maxima of ``k + 1``
    slices of ``tops`` (when ``k + 1 <= 7``, the second smallest of the maxima of 8
    interleaved ones, :func:`_eight_floor`), which at least ``k + 1`` entries reach. They
    are listed into ``kept`` (scratch of ``len(tops)``) without a branch per entry, ranked
    (:func:`_ranks`, into ``ranks``, int64 scratch of ``len(tops)``), and each one is
    stored at ``min(rank, k + 1)``: no branch on the values, where insertions into a sorted
    buffer mispredicted."""
    n = tops.shape[0]
    if k + 1 <= 7 and n >= 8:
        floor = _eight_floor(tops)
    else:
        floor = _slice_floor(tops, n, k + 1)
    count = 0
    for c in range(n):
        kept[count] = float(tops[c])
        count += tops[c] >= floor
    padded = _pad(kept, count)
    _ranks(kept, None, count, padded, ranks)
    for i in range(count):
        select[min(ranks[i], k + 1)] = kept[i]


@njit(inline="always", **_JIT)
def _threshold(tops, k, m, eps, select):
    """``u`` from the chunk maxima ``tops`` (more than ``m + 1``, no NaN; ``select``: their
    ``k + 1`` largest, :func:`_select_largest`): at least ``k + 1`` of them reach it, and
    at most ``m + 1`` unless ties force more.

    The largest maximum ``_GAP·ε`` below the k-th largest, when at most ``m + 1`` maxima
    reach it; else the lowest value that at most ``m + 1`` maxima reach, found by bisection
    between it and the (k+1)-th largest (vectorised passes)."""
    u = _largest_below(tops, select[k - 1] - _GAP * eps)  # at most the (k+1)-th
    if _count_from(tops, u) <= m + 1:
        return u
    lo, hi = u, select[k]
    if _count_from(tops, hi) > m + 1:  # ties at the (k+1)-th
        return hi
    if lo == -np.inf:
        lo = _smallest(tops)  # all reach it
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if _count_from(tops, mid) <= m + 1:
            hi = mid
        else:
            lo = mid
    return hi


@njit(**_JIT)
def _largest_from(row, start):
    """The largest entry of ``row[start:]`` (−∞ when empty), NaN when it holds a NaN or an
    infinity."""
    top = -np.inf
    check = 0.0  # NaN iff a NaN or an infinity
    for j in range(start, row.shape[0]):
        v = float(row[j])
        top = max(top, v)
        check += v * 0.0
    return top + check


@njit(inline="always", **_JIT)
def _candidates(row, k, m, eps, cand_col, cand_x, tops, chosen, select, listed_x,
                listed_col):
    """Step 1: the candidates are the columns with ``x_j >= u``, at least ``k + 1`` of
    them, listed in ``cand_col`` and ``cand_x`` (by decreasing score when there are at most
    ``_SORTED_CANDIDATES``).
    Returns ``(count, u, finite)``; ``finite`` is False when a short row holds a NaN or an
    infinity (then nothing else is meaningful).

    ``u`` comes from the chunk maxima (chunks of 16 strided columns, :func:`_chunk_tops`;
    :func:`_threshold`), which the caller puts in ``tops[:⌊C/16⌋]``, with their ``k + 1``
    largest in ``select``, when there are more than ``m + 1`` chunks (the row then known to
    be finite): at least ``k + 1`` of them reach it, so at least as many entries, and only
    the chunks whose maximum reaches it are read entry by entry. It lies ``_GAP·ε`` below
    the k-th largest maximum when few maxima reach that (then an exceedance over the
    candidates is rare). Rows of fewer than ``16 (m + 2)`` entries make every column a
    candidate (``u = −∞``), unless they hold at least ``_SHORT_SEARCH (m + 2)`` entries and
    at most ``m + 1`` of them lie within ``_SHORT_LEVEL·ε`` of the k-th largest: then each
    entry is its own chunk. ``u`` depends on the scores only. ``listed_x``, ``listed_col``:
    scratch of ``C`` (the sort, and the entries' selection)."""
    cols = row.shape[0]
    n_chunks = cols // _CHUNK
    if n_chunks <= m + 1:
        finite = True
        for j in range(cols):
            v = float(row[j])
            finite = finite and (v - v == 0.0)
            cand_col[j] = j
            cand_x[j] = v
        if not finite:
            return 0, np.nan, False
        count, u = cols, -np.inf
        if cols >= _SHORT_SEARCH * (m + 2):  # each class its own chunk: u from the row
            _select_largest(row, k, select, listed_x, listed_col)
            floor = select[k - 1] - _SHORT_LEVEL * eps
            if _count_from(row, floor) <= m + 1:  # u can lie below: few proposals
                u = min(_threshold(row, k, m, eps, select), floor)
                count = 0
                for j in range(cols):  # in place: count <= j
                    v = cand_x[j]
                    cand_col[count] = j
                    cand_x[count] = v
                    count += v >= u
    else:
        tops = tops[:n_chunks]
        u = _threshold(tops, k, m, eps, select)
        reached = 0  # the chunks whose maximum reaches u, listed without branches
        for c in range(n_chunks):
            chosen[reached] = c
            reached += tops[c] >= u
        # unsigned indices: numba checks every signed index for a negative (wrapping) one
        listed = np.uint64(0)
        end, step = np.uint64(_CHUNK * n_chunks), np.uint64(n_chunks)
        for i in range(reached):
            j = np.uint64(chosen[i])
            for _ in range(_CHUNK):  # a constant count: no division for the loop's length
                v = float(row[j])
                cand_col[listed] = j
                cand_x[listed] = v
                listed += np.uint64(v >= u)
                j += step
        for j in range(end, np.uint64(cols)):
            v = float(row[j])
            cand_col[listed] = j
            cand_x[listed] = v
            listed += np.uint64(v >= u)
        # np.int64, not int(): numba's int() of a uint64 stays uint64, and uint64 merged
        # with the other branch's int64 count is typed float64
        count = np.int64(listed)
    if count > _SORTED_CANDIDATES:
        return count, u, True
    # by decreasing score (the draws' order is then predictable), equal scores in the order
    # they were listed (:func:`_rank`)
    for i in range(count):
        listed_x[i] = cand_x[i]
        listed_col[i] = cand_col[i]
    padded = _pad(listed_x, count)
    for i in range(count):
        rank = _rank(listed_x, padded, i)
        cand_x[rank] = listed_x[i]
        cand_col[rank] = listed_col[i]
    return count, u, True


@njit(**_JIT)
def _dense_row(row, k, eps, n_samples, state, perturbed, r, given, top_val, top_col,
               out_val, out_col):
    """Every entry drawn: the reference's definition (used for non-finite rows)."""
    for b in range(n_samples):
        filled = 0
        for j in range(row.shape[0]):
            if given:
                v = float(perturbed[b, r, j])
            else:
                state, z = _normal(state)
                v = float(row[j]) + eps * z
            if filled < k or _above(v, top_val[k - 1]):
                i = min(filled, k - 1)
                while i > 0 and _above(v, top_val[i - 1]):
                    top_val[i] = top_val[i - 1]
                    top_col[i] = top_col[i - 1]
                    i -= 1
                top_val[i] = v
                top_col[i] = j
                filled += 1
        out_val[b] = top_val[k - 1]
        out_col[b] = top_col[k - 1]


@njit(fastmath=_REASSOC, **_JIT)
def _bucket_ids(row, listed, n, u, inv, last, at_u, bucket):
    """``bucket[i] = min(⌊(u − x)·inv⌋, last)`` for ``x < u`` (0 where the product
    underflows), ``at_u`` for ``x >= u``, with ``x`` the score of column ``listed[i]``
    (``listed`` None: column ``i``), ``i < n``; vectorised."""
    for i in range(n):
        v = float(row[i if listed is None else listed[i]])
        bucket[i] = np.uint8(min((u - v) * inv, last)) if v < u else np.uint8(at_u)


@njit(**_JIT)
def _bucket_order(row, listed, n, u, width, n_buckets, at_u, order, ranked, bucket, tally):
    """Counting sort of ``n`` columns (``listed[:n]``, or every column when ``listed`` is
    None) by their bucket ``⌊(u − x_j)/width⌋``, capped at the last one (``n_buckets − 1 <
    255``), those with ``x_j >= u`` in bucket ``at_u`` (0, or ``n_buckets``: after the
    others), into ``order[:n]``; ``ranked[p]`` = the bucket of ``order[p]``.

    The columns are counted and placed in 4 interleaved streams (the ``i``-th listed column
    in stream ``i mod 4``, the last ``n mod 4`` in stream 0), each with its own histogram
    and fill pointers, so that neither waits on a pointer that the previous column just
    moved. Within a bucket: stream 0's columns, then stream 1's, …, each in the listed
    order.

    ``bucket`` (uint8 scratch of ``n``) holds the listed columns' buckets, ``order`` uint32
    columns and ``tally`` (uint32 scratch of at least ``4 (n_buckets + 1)``) the
    histograms, then the fill pointers: unsigned indices spare the check for negative ones
    that numba puts on every signed index (the histogram and the scatter ran 1.5x to 2x
    faster than with int32 ids and int64 counts, and the columns read from ``order`` index
    the row without it too)."""
    _bucket_ids(row, listed, n, u, 1.0 / width, n_buckets - 1.0, at_u, bucket)
    stride = n_buckets + 1
    counts = tally[:4 * stride]  # 4 histograms: no store stalls
    counts[:] = 0
    quad = n // 4 * 4
    for i in range(0, quad, 4):
        counts[bucket[i]] += 1
        counts[stride + bucket[i + 1]] += 1
        counts[2 * stride + bucket[i + 2]] += 1
        counts[3 * stride + bucket[i + 3]] += 1
    for i in range(quad, n):
        counts[bucket[i]] += 1
    # the histograms become the fill pointers (where each stream puts its next column of
    # each bucket): bucket by bucket, stream by stream; each bucket's positions ranked
    total = np.uint32(0)
    for b in range(stride):
        first = total
        for s in range(4):
            count = counts[s * stride + b]
            counts[s * stride + b] = total
            total += count
        ranked[first:total] = b
    one = np.uint32(1)
    s1, s2, s3 = np.uint64(stride), np.uint64(2 * stride), np.uint64(3 * stride)
    for i in range(0, quad, 4):
        i0, i1 = np.uint64(bucket[i]), np.uint64(bucket[i + 1]) + s1
        i2, i3 = np.uint64(bucket[i + 2]) + s2, np.uint64(bucket[i + 3]) + s3
        p0, p1, p2, p3 = counts[i0], counts[i1], counts[i2], counts[i3]
        if listed is None:
            order[p0], order[p1], order[p2], order[p3] = i, i + 1, i + 2, i + 3
        else:
            order[p0], order[p1] = listed[i], listed[i + 1]
            order[p2], order[p3] = listed[i + 2], listed[i + 3]
        counts[i0], counts[i1], counts[i2], counts[i3] = p0 + one, p1 + one, p2 + one, p3 + one
    for i in range(quad, n):
        i0 = np.uint64(bucket[i])
        p0 = counts[i0]
        order[p0] = i if listed is None else listed[i]
        counts[i0] = p0 + one


@njit(inline="always", **_JIT)
def _trial(state, xj, j, eps, level, top_val, top_col, k):
    """The proposal of column ``j`` (score ``xj``) at a ``level`` of :func:`_level`:
    ``W`` ~ N(0, 1) conditioned on ``W > a_q``, accepted when ``x_j + εW`` beats the k-th
    entry, which it then replaces. Returns the stream's state and whether ``T`` rose."""
    state, z = _normal_above(state, level[2], level[3], level[4])
    value = xj + eps * z
    if _beats(value, j, top_val[k - 1], top_col[k - 1]):
        _insert(top_val, top_col, k, value, j)
        return state, True
    return state, False


@njit(inline="always", **_JIT)
def _bucket_base(t, u, inv_eps):
    """The grid index from which :func:`_bucket_level` reads the levels of the buckets below
    ``u`` at the threshold ``t`` (``inv_eps = 1/ε``): that of :func:`_level` at
    ``(t − u)/ε − 2⁻²⁰`` (twice the slack, which also covers the buckets' float slack), or
    −1 below the grid."""
    return _grid_index((t - u) * inv_eps - _GRID_SLACK)


@njit(inline="always", **_JIT)
def _bucket_level(base, bucket):
    """The level (:func:`_level`) of the trials in bucket ``bucket`` below ``u``, whose scores
    are at most ``u − bucket·ε·_BUCKET_WIDTH`` (:func:`_bucket_order`): the grid point
    ``_BUCKET_STEPS·bucket`` above ``base`` (:func:`_bucket_base`), at most the grid's last.
    It lies at least 2⁻²⁰ below every ``(T − x_j)/ε`` of the bucket, and at most one grid
    point below :func:`_level` of ``(T − top of the bucket)/ε``; a table read instead of
    that float computation at each change of bucket. Every trial is a proposal (``q = 1``)
    when ``base`` is −1 (``T`` more than 8ε below ``u``)."""
    if base < 0:
        return _level_at(-1)
    return _level_at(min(base + _BUCKET_STEPS * bucket, _GRID_A.shape[0] - 1))


@njit(**_JIT)
def _reveal_buckets(state, row, order, ranked, others, u, eps, top_val, top_col, k, pos):
    """Step 3 over ``order[pos:others]``, classes ordered by buckets of decreasing scores
    below ``u`` (``ranked[p]``: the bucket of ``order[p]``): the level of the bucket at the
    current position (:func:`_bucket_level`), read again when the bucket changes or ``T``
    rises."""
    current = -1
    inv_eps = 1.0 / eps
    base = _bucket_base(top_val[k - 1], u, inv_eps)
    level = _level(np.nan)  # replaced at once (current = −1)
    while pos < others:
        bucket = int(ranked[pos])
        if bucket != current:
            current = bucket
            level = _bucket_level(base, bucket)
        state, gap = _geometric(state, level, others - pos)
        if pos + gap >= others:
            return state
        pos += int(gap)
        j = order[pos]
        pos += 1
        state, rose = _trial(state, float(row[j]), j, eps, level, top_val, top_col, k)
        if rose:
            base = _bucket_base(top_val[k - 1], u, inv_eps)
            current = -1
    return state


@njit(**_JIT)
def _reveal_listed(state, row, listed, n, u, eps, top_val, top_col, k, level, gap):
    """Step 3 over ``n`` columns in turn (``listed[:n]``, or every column when ``listed``
    is None) at the common level of ``x_j < u`` (a proposal that falls on a column with
    ``x_j >= u``, a candidate, is discarded: its noise is drawn already), from the first
    gap (drawn by the caller at that ``level`` of :func:`_level`)."""
    pos = 0
    while pos + gap < n:
        i = pos + int(gap)
        pos = i + 1
        j = i if listed is None else listed[i]
        xj = float(row[j])
        if xj < u:
            state, stale = _trial(state, xj, j, eps, level, top_val, top_col, k)
            if stale:
                level = _level((top_val[k - 1] - u) / eps)
        state, gap = _geometric(state, level, n - pos)
    return state


@njit(inline="always", **_JIT)
def _is_broad(tops, top, m, eps):
    """Whether at least ``m + 2`` of the chunk maxima ``tops`` lie within
    ``_BROAD_SPREAD·ε`` of the row's largest score ``top`` (vectorised)."""
    return _count_from(tops, top - _BROAD_SPREAD * eps) >= m + 2


@njit(inline="always", **_JIT)
def _keep_reaching(values, order, n, floor, kept_val, kept_col):
    """``kept_val``, ``kept_col`` = the entries ``(values[i], order[i])``, ``i < n``, with
    ``values[i] >= floor``, in order, listed without a branch per entry; returns their
    count."""
    kept = 0
    for i in range(n):
        kept_val[kept] = values[i]
        kept_col[kept] = order[i]
        kept += values[i] >= floor
    return kept


@njit(**_JIT)
def _head_best(values, order, full, k, guess, top_val, top_col, kept_val, kept_col, ranks):
    """``top_val[:k]``, ``top_col[:k]`` = the ``k`` best of the ``full >= k`` entries
    ``(values[i], order[i])`` in torch.topk's order of finite values, descending. Only the
    entries that reach ``guess`` are ranked when at least ``k`` do (they then hold the
    ``k`` best), else every entry; returns whether the guess held.

    The kept entries are listed into ``kept_val``, ``kept_col`` (scratch of ``full``, plus 7
    for :func:`_pad`'s full vector steps) without a branch per entry; each one's rank is the
    number of kept entries that beat it, the smaller column first among equal values
    (:func:`_ranks`, into ``ranks``, int64 scratch as long), and it is stored at
    ``min(rank, k)``: ``top_val``, ``top_col`` hold ``k + 1`` entries, the last a sink for
    the others. No branch depends on the values, unlike insertions into a sorted buffer."""
    kept = _keep_reaching(values, order, full, guess, kept_val, kept_col)
    held = kept >= k
    if not held:  # every entry
        kept = _keep_reaching(values, order, full, -np.inf, kept_val, kept_col)
    _ranks(kept_val, kept_col, kept, _pad(kept_val, kept), ranks)
    for i in range(kept):
        top_val[min(ranks[i], k)] = kept_val[i]
        top_col[min(ranks[i], k)] = kept_col[i]
    return held


@njit(inline="always", **_JIT)
def _broad_cut(row, top, eps, full, tops, above, rest):
    """How a broad row with largest score ``top`` and chunk maxima ``tops`` is ordered:
    ``(cut, n, m)``, the ``n`` classes with ``x_j >= cut`` listed in ``above`` and the
    ``m`` others (the rest) in ``rest`` (:func:`_split`), or ``(−∞, C, 0)`` when every class
    is to be ordered. ``cut`` is a value of the row's dtype ``_BROAD_DEPTH·ε`` below
    ``top``, lowered when fewer than ``full`` classes reach it to one that ``full`` chunk
    maxima reach; every class is ordered when fewer than ``C/_FEW_REST`` would be left out
    (judged on a sample first, so that the listing is skipped), or there are fewer than
    ``full`` chunks."""
    cols = row.shape[0]
    cut = float(row.dtype.type(top - _BROAD_DEPTH * eps))
    sample = min(cols, _REST_SAMPLE)
    if (sample - _count_from(row[:sample], cut)) * _FEW_REST < sample:
        return -np.inf, cols, 0
    n, m = _split(row, cut, np.inf, above, rest)
    if n < full:  # too few for the head
        if tops.shape[0] < full:
            return -np.inf, cols, 0
        cut = float(_slice_floor(tops, tops.shape[0], full))
        n, m = _split(row, cut, np.inf, above, rest)
    if m * _FEW_REST < cols:
        return -np.inf, cols, 0
    return cut, n, m


@njit(inline="always", **_JIT)
def _rest_floor(t, cut, eps, n, dtype_of):
    """The score, of the dtype of ``dtype_of``, below which ``n`` classes make at most
    ``_REST_TARGET`` proposals a draw at threshold ``t``: ``t − a·ε`` for the first grid
    level ``a`` at or above that of ``(t − cut)/ε`` (:func:`_level`) with ``n·Φ̄(a) <=
    _REST_TARGET``."""
    i = max(_grid_index((t - cut) / eps), 0)
    while i + 1 < _GRID_A.shape[0] and _GRID_TAIL[i] * n > _REST_TARGET:
        i += 1
    return float(dtype_of.dtype.type(t - _GRID_A[i] * eps))


@njit(inline="always", **_JIT)
def _order_listed(row, listed, n, u, lo, width, order, ranked, bucket, tally):
    """:func:`_bucket_order` of the ``n`` columns ``listed``, whose scores lie in ``[lo,
    u]``, by buckets of ``width`` below ``u``: as many as that range needs, at most
    ``_BROAD_BUCKETS``."""
    n_buckets = min(int((u - lo) / width) + 1, _BROAD_BUCKETS)
    _bucket_order(row, listed, n, u, width, n_buckets, 0, order, ranked, bucket, tally)


@njit(**_JIT)
def _broad_row(row, r, k, eps, n_samples, top, state, perturbed, given, out_val, out_col,
               top_val, top_col, order, ranked, bucket, noise, noise_bits, tally, head_x,
               head_v, picked, ranks, gauss, tops, above, rest):
    """A broad row (see ``_BROAD_SPREAD``): its classes within ``_BROAD_DEPTH·ε`` of its
    largest score ``top`` (at least the head, below) ordered by buckets of width ``ε/8``
    below ``top`` (:func:`_broad_cut`, :func:`_bucket_order`), or every class when few
    would be left out; per draw, the first ``k + _BROAD_FULL`` classes of the order (the
    head, their scores gathered once in ``head_x``) drawn in full into ``noise`` (their
    Gaussians for every draw at once when they fit in ``gauss``,
    :func:`_gaussians_at_once`), filtered by a guess and ranked (:func:`_head_best`, with
    ``head_v``, ``picked`` and ``ranks`` as scratch), the other ordered ones revealed
    lazily by buckets (:func:`_reveal_buckets`), then the rest at one common level over
    their list (:func:`_reveal_listed`). When the rest would make more than
    ``_REST_EXTEND`` proposals over the remaining draws, its part above
    :func:`_rest_floor` is ordered too (a band after the others, by buckets below the cut)
    and the rest shrinks to the classes below it, once per row. On given draws, each trial
    is read from them."""
    cols = row.shape[0]
    width = eps * _BUCKET_WIDTH
    full = min(k + _BROAD_FULL, cols)
    cut, n_sorted, n_rest = _broad_cut(row, top, eps, full, tops, above, rest)
    if n_rest:
        _order_listed(row, above, n_sorted, top, cut, width, order, ranked, bucket, tally)
    else:
        _bucket_order(row, None, cols, top, width, _BROAD_BUCKETS, 0, order, ranked, bucket,
                      tally)
    n_band, band_top, extended = 0, cut, False
    for i in range(full):
        head_x[i] = float(row[order[i]])
    guess = _smallest(head_x[:k])
    batched = False
    if not given:
        state, batched = _gaussians_at_once(state, n_samples, full, gauss, noise_bits)
    for b in range(n_samples):
        state = _perturbed_values(state, b, r, head_x, order, full, eps, perturbed, given,
                                  batched, gauss, noise, noise_bits)
        if not _head_best(noise, order, full, k, guess, top_val, top_col, head_v, picked,
                          ranks):
            guess -= _HEAD_RETRY * eps
        if given:  # every trial read from the draws
            for i in range(full, n_sorted + n_rest):
                j = order[i] if i < n_sorted else rest[i - n_sorted]
                v = float(perturbed[b, r, j])
                if _beats(v, j, top_val[k - 1], top_col[k - 1]):
                    _insert(top_val, top_col, k, v, j)
        else:
            state = _reveal_buckets(state, row, order, ranked, n_sorted, top, eps, top_val,
                                    top_col, k, full)
            if n_rest:
                level = _level((top_val[k - 1] - cut) / eps)
                if not extended and level[0] * n_rest * (n_samples - b) > _REST_EXTEND:
                    extended = True
                    lo = _rest_floor(top_val[k - 1], cut, eps, n_rest, row)
                    if lo < cut:  # the band [lo, cut) ordered after the others
                        n_band, n_rest = _split(row, lo, cut, above, rest)
                        _order_listed(row, above, n_band, cut, lo, width, order[n_sorted:],
                                      ranked[n_sorted:], bucket, tally)
                        band_top, cut = cut, lo
            if n_band:
                state = _reveal_buckets(state, row, order[n_sorted:], ranked[n_sorted:],
                                        n_band, band_top, eps, top_val, top_col, k, 0)
                level = _level((top_val[k - 1] - cut) / eps)
            if n_rest:
                state, gap = _geometric(state, level, n_rest)
                if gap < n_rest:
                    state = _reveal_listed(state, row, rest, n_rest, cut, eps, top_val,
                                           top_col, k, level, gap)
        out_val[b] = top_val[k - 1]
        out_col[b] = top_col[k - 1]


@njit(**_JIT)
def _short_is_broad(row, top, k, eps):
    """Whether a short row (too few chunks for the candidate search) whose largest score is
    ``top`` is drawn as a broad row: at least ``k + _BROAD_FULL`` classes within
    ``_BROAD_SPREAD·ε`` of ``top``, and at least ``1/_FEW_REST`` of its classes under the
    cut of :func:`_broad_cut` (else the order would hold every class, and drawing every
    Gaussian is cheaper). Two vectorised counts."""
    cols = row.shape[0]
    cut = float(row.dtype.type(top - _BROAD_DEPTH * eps))
    return (_count_from(row, top - _BROAD_SPREAD * eps) >= k + _BROAD_FULL
            and (cols - _count_from(row, cut)) * _FEW_REST >= cols)


@njit(inline="always", **_JIT)
def _row(row, r, k, eps, n_samples, m, state, perturbed, given, out_val, out_col, top_val,
         top_col, select, cand_col, cand_x, cand_v, noise_bits, order, ranked, bucket, tops,
         chosen, head_v, picked, tally, gauss, above, rest_list):
    cols = row.shape[0]
    n_chunks = cols // _CHUNK
    finite = not given or _draws_finite(perturbed, r)  # else the reference's order
    searched = n_chunks > m + 1  # else a short row
    broad, top = False, np.nan  # top: the largest score, for a broad row
    if finite and (searched or cols >= _SHORT_BROAD * (k + _BROAD_FULL)):
        # the chunk maxima (step 1), which also tell a broad row
        _chunk_tops(row, tops[:n_chunks])
        rest = _largest_from(row, _CHUNK * n_chunks)  # the columns after the chunks
        finite = _all_numbers(tops[:n_chunks]) and rest == rest
        if finite:  # the broad test first: the k + 1 largest maxima serve step 1 only
            top = max(_largest_below(tops[:n_chunks], np.inf), rest)
            if searched:
                broad = _is_broad(tops[:n_chunks], top, m, eps)
                if not broad:
                    _select_largest(tops[:n_chunks], k, select, cand_v, picked)
            else:
                broad = _short_is_broad(row, top, k, eps)
    if broad:
        _broad_row(row, r, k, eps, n_samples, top, state, perturbed, given, out_val,
                   out_col, top_val, top_col, order, ranked, bucket, cand_v, noise_bits, tally,
                   cand_x, head_v, picked, cand_col, gauss, tops[:n_chunks], above, rest_list)
        return
    if finite:
        count, u, finite = _candidates(row, k, m, eps, cand_col, cand_x, tops, chosen, select,
                                       cand_v, picked)
    if not finite:
        _dense_row(row, k, eps, n_samples, state, perturbed, r, given, top_val, top_col,
                   out_val, out_col)
        return
    others = cols - count
    batched = False
    if not given:
        state, batched = _gaussians_at_once(state, n_samples, count, gauss, noise_bits)
    sorted_ = False
    width = eps * _BUCKET_WIDTH  # of the buckets ordering the non-candidates
    for b in range(n_samples):
        # 2. the candidates in full (count >= k): the first k fill the buffer
        state = _perturbed_values(state, b, r, cand_x, cand_col, count, eps, perturbed,
                                  given, batched, gauss, cand_v, noise_bits)
        if count > _SORTED_CANDIDATES:
            _select_many(cand_v, cand_col, count, k, top_val, top_col, picked)
        else:  # by decreasing score: few insertions
            for i in range(k):
                _insert(top_val, top_col, i + 1, cand_v[i], cand_col[i])
            for i in range(k, count):
                v, j = cand_v[i], cand_col[i]
                if _beats(v, j, top_val[k - 1], top_col[k - 1]):
                    _insert(top_val, top_col, k, v, j)
        if others == 0:
            pass
        elif given:  # 3. on given draws: each trial Z_j > (T − x_j)/ε read from them
            for j in range(cols):
                v = float(perturbed[b, r, j])
                if float(row[j]) < u and _beats(v, j, top_val[k - 1], top_col[k - 1]):
                    _insert(top_val, top_col, k, v, j)
        else:  # 3. the other classes, revealed lazily
            level = _level((top_val[k - 1] - u) / eps)
            if not sorted_ and level[0] * others > _SORT_FRACTION * cols + 8.0:
                _bucket_order(row, None, cols, u, width, _N_BUCKETS, _N_BUCKETS, order,
                              ranked, bucket, tally)
                sorted_ = True
            if sorted_:
                state = _reveal_buckets(state, row, order, ranked, others, u, eps, top_val,
                                        top_col, k, 0)
            else:  # usually no proposal at all: the first gap passes the end of the row
                state, gap = _geometric(state, level, cols)
                if gap < cols:
                    state = _reveal_listed(state, row, None, cols, u, eps, top_val, top_col,
                                           k, level, gap)
        out_val[b] = top_val[k - 1]
        out_col[b] = top_col[k - 1]


@njit(**_JIT_ALLOCATING)
def _block(x, k, eps, n_samples, m, seed, perturbed, given, block, n_blocks, out_val,
           out_col):
    """Rows ``block·R/n_blocks`` to ``(block+1)·R/n_blocks``, with one set of scratch
    buffers, allocated here and used by :func:`_block_rows`, which counts no references."""
    cols = x.shape[1]
    top_val = np.empty(k + 1, dtype=np.float64)  # the k best, and a sink (_head_best)
    top_col = np.empty(k + 1, dtype=np.int64)
    select = np.empty(k + 2, dtype=np.float64)  # the k + 1 largest maxima, and a sink
    cand_col = np.empty(cols, dtype=np.int64)
    cand_x = np.empty(cols, dtype=np.float64)
    cand_v = np.empty(cols, dtype=np.float64)
    noise_bits = np.empty(cols, dtype=np.uint64)
    order = np.empty(cols, dtype=np.uint32)
    ranked = np.empty(cols, dtype=np.uint8)  # the bucket at each position of the order
    bucket = np.empty(cols, dtype=np.uint8)
    above = np.empty(cols + 16, dtype=np.uint32)  # a broad row's lists (_split): + 16
    rest_list = np.empty(cols + 16, dtype=np.uint32)
    tally = np.empty(4 * (_BROAD_BUCKETS + 1), dtype=np.uint32)
    tops = np.empty(cols // _CHUNK + 1, dtype=x.dtype)
    chosen = np.empty(cols // _CHUNK + 1, dtype=np.int64)
    head_v = np.empty(k + _BROAD_FULL + 7, dtype=np.float64)  # + 7: _pad's vector steps
    picked = np.empty(cols, dtype=np.int64)
    gauss = np.empty(cols, dtype=np.float64)  # a row's Gaussians, every draw's at once
    _block_rows(x, k, eps, n_samples, m, seed, perturbed, given, block, n_blocks, out_val,
                out_col, top_val, top_col, select, cand_col, cand_x, cand_v, noise_bits, order,
                ranked, bucket, tally, tops, chosen, head_v, picked, gauss, above, rest_list)


@njit(**_JIT)
def _block_rows(x, k, eps, n_samples, m, seed, perturbed, given, block, n_blocks, out_val,
                out_col, top_val, top_col, select, cand_col, cand_x, cand_v, noise_bits, order,
                ranked, bucket, tally, tops, chosen, head_v, picked, gauss, above, rest_list):
    """The rows of :func:`_block` with its scratch buffers; row ``r`` draws from its own
    stream, keyed by ``(seed, r)``."""
    rows = x.shape[0]
    for r in range(block * rows // n_blocks, (block + 1) * rows // n_blocks):
        state = _mix(seed ^ _mix(np.uint64(r) * _GAMMA + _GAMMA))
        _row(x[r], r, k, eps, n_samples, m, state, perturbed, given, out_val[r], out_col[r],
             top_val, top_col, select, cand_col, cand_x, cand_v, noise_bits, order, ranked,
             bucket, tops, chosen, head_v, picked, tally, gauss, above, rest_list)


@njit(**_JIT_ALLOCATING)
def _rows_serial(x, k, eps, n_samples, m, seed, perturbed, given, n_blocks, out_val,
                 out_col):
    _block(x, k, eps, n_samples, m, seed, perturbed, given, 0, 1, out_val, out_col)


@njit(parallel=True, **_JIT_ALLOCATING)
def _rows_parallel(x, k, eps, n_samples, m, seed, perturbed, given, n_blocks, out_val,
                   out_col):
    for block in prange(n_blocks):
        _block(x, k, eps, n_samples, m, seed, perturbed, given, block, n_blocks, out_val,
               out_col)


def _draw_rows(x: np.ndarray, k: int, eps: float, n_samples: int, m: int, seed: np.uint64,
               perturbed: np.ndarray, given: bool, threads: int, out_val: np.ndarray,
               out_col: np.ndarray) -> None:
    """The draws into ``out_val`` (float64) and ``out_col``: the rows shared among
    ``threads`` threads (numba's count, set by the caller:
    :class:`smoothtopk._numba.parallel_threads`) in blocks of a few rows each, or one
    thread. A Python function: numba's cache of a compiled caller in another module would
    not notice changes to this module's kernel (a cached compiled version of the fused
    hinge, calling it, crashed once loaded)."""
    if threads > 1:
        _rows_parallel(x, k, eps, n_samples, m, seed, perturbed, given,
                       min(x.shape[0], 4 * threads), out_val, out_col)
    else:
        _rows_serial(x, k, eps, n_samples, m, seed, perturbed, given, 1, out_val, out_col)


def kth_draws(
    x: np.ndarray, k: int, epsilon: float, n_samples: int, n_candidates: int, seed: int,
    perturbed: np.ndarray | None = None, threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Values ``(R, B)`` (dtype of ``x``) and columns ``(R, B)`` (int64) of the k-th largest
    of ``x[r] + ε Z[b, r]``, ``B = n_samples``.

    ``x``: C-contiguous ``(R, C)`` float32 or float64; ``1 <= k <= C``; ``epsilon > 0``;
    ``n_candidates`` (``M >= k``) only changes the speed; ``seed``: 64 bits keying the
    rows' streams; ``threads``: rows are shared among that many threads (the result does
    not depend on it). ``perturbed`` (``(B, R, C)``, ``x + ε·noise`` computed by the
    caller) gives the draws instead: each trial of step 3 then reads its answer from them,
    which checks the candidates and the buffer logic draw by draw (not the sampling).
    """
    values, columns = kth_draws_float64(x, k, epsilon, n_samples, n_candidates, seed,
                                        perturbed, threads)
    return values.astype(x.dtype, copy=False), columns


#: The kernel's ``perturbed`` argument when no draws are given, per dtype (never read).
_NO_DRAWS = {np.dtype(t): np.empty((1, 1, 1), dtype=t) for t in (np.float32, np.float64)}


def kth_draws_float64(
    x: np.ndarray, k: int, epsilon: float, n_samples: int, n_candidates: int, seed: int,
    perturbed: np.ndarray | None = None, threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kth_draws` with the values in float64, as the kernel computes them, for
    callers that round them to the dtype of ``x`` in a pass of their own."""
    given = perturbed is not None
    if perturbed is None:
        perturbed = _NO_DRAWS.get(x.dtype)
    if perturbed is None:  # a dtype the kernel does not take: its own error
        perturbed = np.empty((1, 1, 1), dtype=x.dtype)
    rows = x.shape[0]
    values = np.empty((rows, n_samples), dtype=np.float64)
    columns = np.empty((rows, n_samples), dtype=np.int64)
    with parallel_threads(min(threads, rows)) as threads:
        _draw_rows(x, k, float(epsilon), n_samples, max(int(n_candidates), k),
                   np.uint64(seed & (2**64 - 1)), perturbed, given, threads, values, columns)
    return values, columns

"""Window geometry for convolution-style 3D pooling (DESIGN.md §2, "Window geometry").

Per axis, for an input of size I, any two of (output size O, kernel k, stride d) fix the
third. Windows start at j*d for j in [0, O) and span k positions; they may overlap (d < k).
Windows that leave input positions uncovered (a remainder at the end, as torch's floor-mode
pooling drops, or gaps when d > k) are refused unless the caller opts in with
`remainder="drop"`, which only the reference-parity poolings do (LLaVA-NeXT-Video's 2 x 2
spatial pool, image crops).
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple, Union

Triple = Tuple[int, int, int]
IntOrTriple = Union[int, Sequence[int]]

AXES = ("T (frames)", "H (height)", "W (width)")
REMAINDERS = ("error", "drop")


def _as_int(value, name: str) -> int:
    """A Python int from an int-like (int, numpy integer, 0-d integer tensor); bools and floats raise."""
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise ValueError(f"{name} must be an int, got the bool {value!r}")
    try:
        return operator.index(value)  # accepts np.int64 and integer 0-d tensors, refuses 2.0 and 2.5
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})") from None


def as_triple(value: IntOrTriple, name: str) -> Triple:
    """An int or a length-3 sequence of ints (numpy / torch integers included) as a 3-tuple of
    Python ints; anything else raises a ValueError naming `name`."""
    if isinstance(value, (int, float)) or getattr(value, "ndim", None) == 0:  # one value for all axes
        v = _as_int(value, name)
        return (v, v, v)
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or 3 ints (T, H, W), got {value!r}") from None
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (T, H, W), got {value!r}")
    return tuple(_as_int(v, f"{name}[{a}]") for a, v in enumerate(values))  # type: ignore[return-value]


def _axis(i: int, o: Optional[int], k: Optional[int], d: Optional[int], axis: str, remainder: str) -> Triple:
    if i < 1:
        raise ValueError(f"axis {axis}: input size must be >= 1, got {i}")
    if o is not None and not 1 <= o <= i:
        raise ValueError(f"axis {axis}: output_size {o} must be in [1, input size {i}]")
    if k is not None and not 1 <= k <= i:
        raise ValueError(f"axis {axis}: kernel {k} must be in [1, input size {i}]")
    if d is not None and d < 1:
        raise ValueError(f"axis {axis}: stride must be >= 1, got {d}")

    if o is None:
        if k is None:
            raise ValueError(f"axis {axis}: give output_size or kernel (stride alone fixes nothing)")
        d = k if d is None else d  # torch's convention: stride defaults to the kernel
        o = (i - k) // d + 1
    elif k is None and d is None:
        d = i // o
        k = i - (o - 1) * d  # O = 1 gives one window of size I
    elif k is None:
        k = i - (o - 1) * d
        if k < 1:
            raise ValueError(f"axis {axis}: {o} windows at stride {d} do not fit in input size {i}")
    elif d is None:
        d = k if o == 1 else (i - k) // (o - 1)
        if d < 1:
            raise ValueError(f"axis {axis}: {o} windows of kernel {k} do not fit in input size {i}")
    if (o - 1) * d + k > i:
        raise ValueError(
            f"axis {axis}: {o} windows of kernel {k} at stride {d} span {(o - 1) * d + k} "
            f"positions, more than the input size {i}"
        )
    covered = k + (o - 1) * min(k, d)  # windows are contiguous when d <= k, else each adds k
    if covered < i and remainder == "error":
        raise ValueError(
            f"axis {axis}: {o} window(s) of kernel {k} at stride {d} cover {covered} of the input size {i}; "
            f"{i - covered} position(s) would be dropped. Choose a size the windows cover, or pass "
            "remainder='drop' for floor-mode cropping"
        )
    return o, k, d


def window_geometry(
    input_size: Sequence[int],
    output_size: Optional[IntOrTriple] = None,
    kernel: Optional[IntOrTriple] = None,
    stride: Optional[IntOrTriple] = None,
    remainder: str = "error",
) -> Tuple[Triple, Triple, Triple]:
    """Resolve (output_size, kernel, stride) per axis of a (T, H, W) grid.

    Args:
        input_size: the grid (T, H, W).
        output_size, kernel, stride: an int (all axes) or 3 ints; any two fix the third, and
            output_size alone fixes both (d = I // O, k = I - (O - 1) * d). kernel alone uses
            stride = kernel. Python, numpy or 0-d torch integers; floats and bools raise.
        remainder: "error" (default) refuses windows that leave input positions uncovered;
            "drop" leaves them out, as torch's floor-mode pooling does (only where a reference
            does exactly that: LLaVA-NeXT-Video's spatial pool, image crops).

    Returns:
        (output_size, kernel, stride), each a 3-tuple of ints.

    Raises:
        ValueError naming the axis for kernel > I, stride < 1, output_size > I, windows that do
        not fit, or (remainder "error") positions no window covers. Never crops silently.
    """
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    grid = as_triple(input_size, "input_size")
    o = as_triple(output_size, "output_size") if output_size is not None else (None,) * 3
    k = as_triple(kernel, "kernel") if kernel is not None else (None,) * 3
    d = as_triple(stride, "stride") if stride is not None else (None,) * 3
    per_axis = [_axis(grid[a], o[a], k[a], d[a], AXES[a], remainder) for a in range(3)]
    out, ker, st = zip(*per_axis)
    return tuple(out), tuple(ker), tuple(st)  # type: ignore[return-value]

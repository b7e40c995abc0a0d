"""Window geometry for convolution-style 3D pooling (DESIGN.md §2, "Window geometry").

Per axis, for an input of size I, any two of (output size O, kernel k, stride d) fix the
third. Windows start at j*d for j in [0, O) and span k positions; they may overlap
(d < k) and may leave a remainder at the end (as torch's floor-mode pooling does).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

Triple = Tuple[int, int, int]
IntOrTriple = Union[int, Sequence[int]]

AXES = ("T (frames)", "H (height)", "W (width)")


def as_triple(value: IntOrTriple, name: str) -> Triple:
    """An int or a length-3 sequence of ints as a 3-tuple; anything else raises."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}")
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(value)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or 3 ints (T, H, W), got {value!r}")
    return values  # type: ignore[return-value]


def _axis(i: int, o: Optional[int], k: Optional[int], d: Optional[int], axis: str) -> Triple:
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
    return o, k, d


def window_geometry(
    input_size: Sequence[int],
    output_size: Optional[IntOrTriple] = None,
    kernel: Optional[IntOrTriple] = None,
    stride: Optional[IntOrTriple] = None,
) -> Tuple[Triple, Triple, Triple]:
    """Resolve (output_size, kernel, stride) per axis of a (T, H, W) grid.

    Args:
        input_size: the grid (T, H, W).
        output_size, kernel, stride: an int (all axes) or 3 ints; any two fix the third, and
            output_size alone fixes both (d = I // O, k = I - (O - 1) * d). kernel alone uses
            stride = kernel.

    Returns:
        (output_size, kernel, stride), each a 3-tuple of ints.

    Raises:
        ValueError naming the axis for kernel > I, stride < 1, output_size > I, or windows that
        do not fit. Never crops silently.
    """
    grid = as_triple(tuple(input_size), "input_size")
    o = as_triple(output_size, "output_size") if output_size is not None else (None,) * 3
    k = as_triple(kernel, "kernel") if kernel is not None else (None,) * 3
    d = as_triple(stride, "stride") if stride is not None else (None,) * 3
    per_axis = [_axis(grid[a], o[a], k[a], d[a], AXES[a]) for a in range(3)]
    out, ker, st = zip(*per_axis)
    return tuple(out), tuple(ker), tuple(st)  # type: ignore[return-value]

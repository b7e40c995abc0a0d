import itertools

import pytest

from ppllava.ops import window_geometry


def test_paper_video_and_image_windows():
    assert window_geometry((32, 24, 24), kernel=(2, 3, 3)) == ((16, 8, 8), (2, 3, 3), (2, 3, 3))
    assert window_geometry((1, 24, 24), kernel=(1, 3, 3)) == ((1, 8, 8), (1, 3, 3), (1, 3, 3))


def test_each_pair_fixes_the_third():
    # O from k, d:  O = (I - k) // d + 1 (the last position uncovered: an explicit floor-mode drop)
    assert window_geometry((10, 10, 10), kernel=3, stride=2, remainder="drop") == ((4, 4, 4), (3, 3, 3), (2, 2, 2))
    # O only: d = I // O, k = I - (O - 1) d
    assert window_geometry((10, 9, 7), output_size=(3, 3, 2)) == ((3, 3, 2), (4, 3, 4), (3, 3, 3))
    # O and d: k = I - (O - 1) d (overlapping windows)
    assert window_geometry((10, 10, 10), output_size=4, stride=2) == ((4, 4, 4), (4, 4, 4), (2, 2, 2))
    # O and k: d = (I - k) // (O - 1) (two positions uncovered)
    assert window_geometry((10, 10, 10), output_size=4, kernel=2, remainder="drop") == ((4, 4, 4), (2, 2, 2), (2, 2, 2))


def test_output_axes_of_size_one():
    # O = 1 means one window of size I; with k given, d = k.
    assert window_geometry((7, 5, 3), output_size=(1, 1, 1)) == ((1, 1, 1), (7, 5, 3), (7, 5, 3))
    # (T keeps 4 of 7 frames, H 4 of 5 rows: an explicit drop)
    assert window_geometry((7, 5, 3), output_size=(1, 2, 1), kernel=(4, 2, 3), remainder="drop") == (
        (1, 2, 1), (4, 2, 3), (4, 3, 3))


@pytest.mark.parametrize("i,k,d", [(i, k, d) for i in range(1, 9) for k in range(1, i + 1) for d in range(1, 5)])
def test_resolved_windows_always_fit_and_round_trip(i, k, d):
    (o, _, _), kernel, stride = window_geometry((i, i, i), kernel=k, stride=d, remainder="drop")
    assert o == (i - k) // d + 1 and (o - 1) * d + k <= i
    # Feeding the result back in (all three given) is accepted unchanged.
    assert window_geometry((i, i, i), (o,) * 3, kernel, stride, remainder="drop") == ((o,) * 3, kernel, stride)
    # By default the same geometry is refused exactly when some position is in no window.
    uncovered = i - (k + (o - 1) * min(k, d))
    if uncovered:
        with pytest.raises(ValueError, match=f"axis T.*{uncovered} position"):
            window_geometry((i, i, i), kernel=k, stride=d)
    else:
        assert window_geometry((i, i, i), kernel=k, stride=d) == ((o,) * 3, kernel, stride)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel=(3, 3, 3)), "axis T"),  # kernel > I on T (I = 2)
        (dict(kernel=(1, 9, 3)), "axis H"),
        (dict(kernel=2, stride=(1, 0, 1)), "axis H.*stride"),
        (dict(output_size=(1, 1, 9)), "axis W.*output_size 9"),
        (dict(output_size=(2, 4, 4), stride=(2, 1, 1)), "axis T.*do not fit"),
        (dict(output_size=(1, 4, 4), kernel=(2, 8, 2)), "axis H"),
        (dict(output_size=2, kernel=2, stride=5), "span"),
        (dict(stride=2), "stride alone"),
        (dict(kernel=(2, 2)), "3 ints"),
    ],
)
def test_invalid_geometry_names_the_axis(kwargs, match):
    with pytest.raises(ValueError, match=match):
        window_geometry((2, 8, 8), **kwargs)

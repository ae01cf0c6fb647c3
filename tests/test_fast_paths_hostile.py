"""Adversarial differential tests of this session's fast paths against their slow paths, on
hostile and odd inputs: a request made by shape (ucsproxy.shapes) must be what the full decode
gives (an error included), whatever bytes moved around the spots."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucsproxy import shapes
from test_shapes import CT, MAKERS, envelope, full


def _same_as_full(bodies: list[bytes], checked: bool = True) -> None:
    memo = shapes.ShapeMemo()
    for body in bodies:
        made, token = memo.get(body, (None, CT, checked), lambda b: full(b, checked))
        expected = full(body, checked)
        if made is None:
            memo.put(token, expected)
        else:
            assert repr(made) == repr(expected), body


def test_a_tag_s_bytes_moved_across_a_spot_are_not_taken_for_the_kept_shape() -> None:
    # Joined, the pieces between spots are the same for these two: only the second is broken.
    good = envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>")
    broken = good.replace(b"<m:DisplayName>Friends</m:DisplayName>", b"<m:DisplayNam>Friends<e/m:DisplayName>")
    moved_quote = envelope('<m:RemoveImGroup><m:GroupId Id="x" ChangeKey="y"/></m:RemoveImGroup>')
    moved_broken = moved_quote.replace(b'Id="x" ChangeKey="y"', b'Id ChangeKey="x"="y"')
    _same_as_full([good, good, broken, good])
    _same_as_full([moved_quote, moved_quote, moved_broken])


_MUTANTS = st.sampled_from([b"<", b">", b'"', b"'", b"=", b"&", b"/", b" ", b"x", b"\x00", b"\xff", b""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MAKERS)), st.integers(0, 2**32), st.lists(
    st.tuples(st.sampled_from(["shift", "byte"]), st.integers(0, 10**6), _MUTANTS), min_size=1, max_size=3),
    st.booleans())
def test_mutated_requests_made_by_shape_are_what_a_full_decode_gives(operation: str, seed: int, mutations: list,
                                                                     checked: bool) -> None:
    """Kept requests of an operation, then mutants of one: bytes moved across a spot's edge (a
    tag's name split around a text, a name moved over an attribute's value) or replaced by a
    byte that matters to XML; each must come out as the full decode gives it, errors included."""
    rng = random.Random(seed)
    bodies = [envelope(MAKERS[operation](rng)) for _ in range(3)]
    mutant = bodies[0]
    for kind, at, byte in mutations:
        parts = shapes._SPOTS.split(mutant)
        if kind == "shift" and len(parts) > 2:
            i = 2 * (at % (len(parts) // 2)) + 1  # a spot; move a byte from before it to after it, or back
            before, after = parts[i - 1], parts[i + 1]
            if at % 2 and before:
                parts[i - 1], parts[i + 1] = before[:-1], before[-1:] + after
            elif after:
                parts[i - 1], parts[i + 1] = before + after[:1], after[1:]
            mutant = b"".join(parts)
        else:
            at %= len(mutant)
            mutant = mutant[:at] + byte + mutant[at + 1:]
    _same_as_full(bodies + [mutant, bodies[1]], checked)

"""Answers made by shape (ucsproxy.shapes.AnswerShapes, the log writer's): the columns and records
made from a kept answer of the same shape are what a full decode gives, for plain names and ids in
personas, groups, errors and faults; anything else (values that are not plain, flags and numbers,
response codes, odd markup, mutated bytes) is decoded in full, with the same outcome."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucsproxy import codec, shapes
from ucsproxy import records as R
from ucsproxy.logjson import answer_columns
from ucsproxy.logpieces import ListColumns, ListPieces
from ucsproxy.model import UcsModel
from ucsproxy.redact import has_trigger_word
from ucsproxy.records import EwsResponse
from ucsproxy.service import UcsService

from test_shapes import MAKERS as REQUEST_MAKERS
from test_shapes import plain
from test_shapes import envelope as request_envelope

CT = "text/xml; charset=utf-8"
MB = "kim.akers@contoso.com"


def decoder(operation: str | None, content_type: str | None = CT):
    def decode(body: bytes):
        return codec.decode_response(body, operation, content_type, memo=True)
    return decode


def full_columns(body: bytes, operation: str | None, content_type: str | None = CT):
    decoded = codec.decode_response(body, operation, content_type)
    return answer_columns(decoded) if isinstance(decoded, EwsResponse) else decoded


def run(bodies: list[bytes], operation: str | None = None, content_type: str | None = CT) -> int:
    """Each body through one AnswerShapes against the full decode (columns and records); returns
    how many were made from a kept answer."""
    memo = shapes.AnswerShapes(answer_columns)
    decode = decoder(operation, content_type)
    context = (content_type, operation)
    made_count = 0
    for body in bodies:
        made, token = memo.get(body, context, decode)
        expected = codec.decode_response(body, operation, content_type)
        if made is None:
            assert memo.response(body, context, decode) is None
            kept = memo.put(token, expected, body.decode("utf-8", "replace"))
            if kept is not None:
                assert isinstance(expected, EwsResponse)
                assert kept.columns == answer_columns(expected)
                assert_clean_right(kept, body)
        else:
            made_count += 1
            assert isinstance(expected, EwsResponse), body
            assert made.columns == answer_columns(expected), body
            assert_clean_right(made, body)
            response = memo.response(body, context, decode)
            assert response == expected
            assert repr(response) == repr(expected)
    return made_count


def assert_clean_right(made: shapes.Made, body: bytes) -> None:
    """A text or column called clean holds no redaction trigger word."""
    if made.text_clean:
        assert not has_trigger_word(body.decode("utf-8"))
    for column, clean in zip(made.columns, made.columns_clean):
        if clean and column is not None:
            assert not has_trigger_word(column)


def item_id(rng: random.Random) -> R.ItemId:
    return R.ItemId(plain(rng), plain(rng))


def persona(rng: random.Random, flag: bool = True, score: int = 2147483647) -> R.Persona:
    name = plain(rng)
    email = R.EmailAddress(name, plain(rng) + "@contoso.com", "SMTP")
    attribution = R.PersonaAttribution("0", item_id(rng), plain(rng), flag, True, False, item_id(rng))
    return R.Persona(
        persona_id=item_id(rng), persona_type="Person", creation_time=plain(rng), display_name=name,
        display_name_first_last=name, display_name_last_first=plain(rng), file_as_id=plain(rng),
        given_name=plain(rng), surname=plain(rng), email_address=email, email_addresses=(email,),
        im_address="sip:" + plain(rng), relevance_score=score, attributions=(attribution,),
        display_names=(R.AttributedValue(name, ("0",)),), emails1=(R.AttributedValue(email, ("0", plain(rng))),),
        im_addresses=(R.AttributedValue("sip:" + plain(rng), ("0",)),),
        business_phone_numbers=(R.AttributedValue(R.PhoneNumber(plain(rng), plain(rng)), ("0",)),))


def group(rng: random.Random) -> R.ImGroup:
    return R.ImGroup(plain(rng), "IPM.DistList.MOC.UserGroup", item_id(rng),
                     member_correlation_key=(item_id(rng), item_id(rng)), smtp_address=plain(rng))


def answer(operation: str, payload=None, **fields) -> bytes:
    return codec.encode_response(R.UcsResponse(operation, payload=payload, **fields))


MAKERS = {
    "persona": lambda r: answer("AddNewImContactToGroup", persona(r)),
    "group": lambda r: answer("AddImGroup", group(r)),
    "error": lambda r: answer("AddImGroup", response_class="Error", response_code="ErrorImGroupDisplayNameAlreadyExists",
                              message_text=plain(r), descriptive_link_key=0),
    "fault": lambda r: codec.encode_fault(R.SoapFault("ErrorSchemaValidation", plain(r), "ErrorSchemaValidation",
                                                      plain(r))),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_plain_names_and_ids_are_put_into_the_kept_answer(kind):
    rng = random.Random(kind)
    bodies = [MAKERS[kind](rng) for _ in range(30)]
    operation = None if kind == "fault" else ("AddNewImContactToGroup" if kind == "persona" else "AddImGroup")
    assert all(isinstance(codec.decode_response(b, operation, CT), EwsResponse) for b in bodies)
    assert run(bodies, operation) >= 25  # the memo is used, not only safe


def test_the_mock_s_answers_of_a_growing_mailbox_are_made_by_shape():
    service = UcsService(UcsModel(seed=5))
    team = service.model.add_im_group(MB, "Team").exchange_store_id
    bodies = []
    for n in range(30):
        for body in (R.AddNewImContactToGroup(f"sip:c{n}@contoso.com", f"Contact {n}", team),
                     R.AddImGroup(f"Group {n}"), R.AddImGroup("Team")):  # the last: an error answer
            request = R.EwsRequest(body.OPERATION, R.SoapHeaders("Exchange2013"), body)
            response = service.handle(request, user=MB)
            assert isinstance(response, R.UcsResponse)
            bodies.append((body.OPERATION, codec.encode_response(response)))
    for operation in ("AddNewImContactToGroup", "AddImGroup"):
        assert run([b for op, b in bodies if op == operation], operation) >= 25


@pytest.mark.parametrize("value", [
    " lead", "trail ", "a&amp;b", "a&#60;b", "caf\u00e9", "tab\there", "back\\slash", "a>b", "\u3042",
])
def test_values_that_are_not_plain_are_decoded_in_full(value):
    first = answer("AddImGroup", R.ImGroup("Friends", "IPM.DistList.MOC.UserGroup", R.ItemId("G1")))
    other = first.replace(b">Friends<", b">" + value.encode() + b"<")
    memo = shapes.AnswerShapes(answer_columns)
    decode = decoder("AddImGroup")
    _, token = memo.get(first, (CT, "AddImGroup"), decode)
    memo.put(token, codec.decode_response(first, "AddImGroup", CT))
    made, _ = memo.get(other, (CT, "AddImGroup"), decode)
    assert made is None
    run([first, other], "AddImGroup")


def test_flags_numbers_codes_and_classes_are_decoded_in_full():
    rng = random.Random(1)
    base = persona(rng)
    first = answer("AddNewImContactToGroup", base)
    others = [
        answer("AddNewImContactToGroup", persona(random.Random(1), flag=False)),  # IsWritable
        answer("AddNewImContactToGroup", persona(random.Random(1), score=7)),  # RelevanceScore
        first.replace(b"<ResponseCode>NoError<", b"<ResponseCode>ErrorInternalServerError<"),
        first.replace(b'ResponseClass="Success"', b'ResponseClass="Warning"'),
        first.replace(b'MajorBuildNumber="349"', b'MajorBuildNumber="350"'),
    ]
    for other in others:
        assert other != first
        memo = shapes.AnswerShapes(answer_columns)
        decode = decoder("AddNewImContactToGroup")
        _, token = memo.get(first, (CT, "AddNewImContactToGroup"), decode)
        memo.put(token, codec.decode_response(first, "AddNewImContactToGroup", CT))
        made, _ = memo.get(other, (CT, "AddNewImContactToGroup"), decode)
        assert made is None, other
        run([first, other, first, other], "AddNewImContactToGroup")


def test_a_value_of_the_first_of_two_elements_only_is_not_taken_for_the_second():
    # The codec reads the first DisplayName of a group; the second is no field's source.
    first = answer("AddImGroup", R.ImGroup("One", "IPM.DistList.MOC.UserGroup", R.ItemId("G1")))
    doubled = first.replace(b"</DisplayName>", b"</DisplayName><DisplayName xmlns=\"http://schemas.microsoft."
                            b"com/exchange/services/2006/types\">Two</DisplayName>", 1)
    assert run([doubled, doubled.replace(b">Two<", b">Three<")], "AddImGroup") == 0
    assert run([doubled, doubled.replace(b">One<", b">Four<")], "AddImGroup") == 1


def test_the_same_value_in_two_fields_is_put_where_each_spot_feeds():
    # display name and first-last name alike in the kept persona, then different
    rng = random.Random(4)
    p = persona(rng)
    bodies = [answer("AddNewImContactToGroup", p),
              answer("AddNewImContactToGroup", R.Persona(**{**p.__dict__, "display_name": "Other"})),
              answer("AddNewImContactToGroup", R.Persona(**{**p.__dict__, "display_name_first_last": "Third"}))]
    assert run(bodies, "AddNewImContactToGroup") == 2


@pytest.mark.parametrize("body", [
    answer("AddImGroup", R.ImGroup("F", "T", R.ItemId("G"))).replace(b"<ImGroup>", b"<ImGroup><!-- x -->"),
    answer("AddImGroup", R.ImGroup("F", "T", R.ItemId("G"))).replace(b">F<", b"><![CDATA[F]]><"),
    answer("AddImGroup", R.ImGroup("F", "T", R.ItemId("G"))).replace(b"<ImGroup>", b"<ImGroup><?pi x?>"),
    b"<x>" + b"y" * shapes.MAX_ANSWER + b"</x>",
])
def test_comments_cdata_instructions_and_big_answers_are_never_taken_apart(body):
    assert shapes._parts(body, shapes.MAX_ANSWER) is None


def test_another_operation_or_content_type_is_another_shape():
    body = answer("AddImGroup", R.ImGroup("F", "T", R.ItemId("G")))
    memo = shapes.AnswerShapes(answer_columns)
    _, token = memo.get(body, (CT, "AddImGroup"), decoder("AddImGroup"))
    memo.put(token, codec.decode_response(body, "AddImGroup", CT))
    assert memo.get(body, (CT, "AddImGroup"), decoder("AddImGroup"))[0] is not None
    assert memo.get(body, (CT, None), decoder(None))[0] is None
    assert memo.get(body, ("text/xml; charset=utf-16", "AddImGroup"), decoder("AddImGroup", "text/xml; charset=utf-16"))[0] is None


def test_the_log_s_list_pieces_make_small_answers_by_shape_and_give_the_whole_decode():
    pieces = ListPieces()
    rng = random.Random(9)
    bodies = [MAKERS["persona"](rng) for _ in range(20)]
    for body in bodies:
        answered = pieces.answer(body, CT, "AddNewImContactToGroup")
        found = answered.answer
        got = tuple(found) if isinstance(found, ListColumns) else answer_columns(found)
        assert got == full_columns(body, "AddNewImContactToGroup")
        if answered.body_clean:
            assert not has_trigger_word(body.decode())
        if answered.result_clean:
            assert not has_trigger_word(got[3])
    assert pieces.shaped >= 15
    assert pieces.whole <= 5


_MUTANTS = st.sampled_from([b"<", b">", b'"', b"'", b"=", b"&", b"/", b" ", b"\\", b"x", b"\x00", b"\xff", b""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(MAKERS)), st.integers(0, 2**32), st.lists(
    st.tuples(st.sampled_from(["shift", "byte"]), st.integers(0, 10**6), _MUTANTS), min_size=1, max_size=3))
def test_mutated_answers_made_by_shape_are_what_a_full_decode_gives(kind: str, seed: int, mutations: list) -> None:
    """Kept answers of a kind, then mutants of one: bytes moved across a spot's edge or replaced
    by a byte that matters to XML; each comes out as the full decode gives it, errors included."""
    rng = random.Random(seed)
    bodies = [MAKERS[kind](rng) for _ in range(3)]
    mutant = bodies[0]
    for how, at, byte in mutations:
        parts = shapes._SPOTS.split(mutant)
        if how == "shift" and len(parts) > 2:
            i = 2 * (at % (len(parts) // 2)) + 1  # a spot; move a byte from before it to after it
            before, spot = parts[i - 1], parts[i]
            if before:
                parts[i - 1], parts[i] = before[:-1], before[-1:] + spot
            mutant = b"".join(parts)
        else:
            at %= len(mutant)
            mutant = mutant[:at] + byte + mutant[at + 1:]
    run(bodies + [mutant, bodies[1], mutant], "AddImGroup" if kind == "group" else None)


# -- requests' log columns by shape (ucsproxy.shapes.RequestShapes, the log writer's) ---------------


def request_run(bodies: list[bytes]) -> int:
    """Each request body through one RequestShapes against the full decode (records, columns,
    clean flags); returns how many were made from a kept request."""
    from ucsproxy.logrow import request_columns

    memo = shapes.RequestShapes(request_columns)

    def decode(data: bytes):
        return codec.decode_request(data, None, CT)

    made_count = 0
    for body in bodies:
        made, token = memo.get(body, ("log", CT), decode, record=True)
        expected = decode(body)
        if made is None:
            kept = memo.put(token, expected, body.decode("utf-8", "replace"))
            if kept is not None:
                assert kept.columns == request_columns(expected)
        else:
            made_count += 1
            assert made.record == expected and repr(made.record) == repr(expected), body
            assert made.columns == request_columns(expected)
            assert_clean_right(made, body)
    return made_count


@pytest.mark.parametrize("operation", sorted(REQUEST_MAKERS))
def test_requests_columns_by_shape_are_the_full_decode_s(operation):
    rng = random.Random(operation)
    bodies = [request_envelope(REQUEST_MAKERS[operation](rng)) for _ in range(30)]
    assert request_run(bodies) >= 20


def test_a_secret_in_a_value_made_by_shape_is_redacted_in_the_row():
    """A kept persona answer and request without trigger words, then one whose names hold a
    password and a bearer token: the row is redacted as a fresh build redacts it."""
    from ucsproxy.logrow import RawExchange, build_row

    def raw(name: str) -> RawExchange:
        request = request_envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>")
        body = answer("AddImGroup", R.ImGroup(name, "IPM.DistList.MOC.UserGroup", R.ItemId("G" + name[:3])))
        return RawExchange("record", 0.0, 1.0, None, None, "POST", "/EWS/Exchange.asmx", 200,
                           [("Content-Type", CT)], request, [("Content-Type", CT)], body)

    from ucsproxy.logpieces import LIST_PIECES

    shaped = LIST_PIECES.shaped
    for name in ("Friends", "Family", "password=hunter2", "Bearer abcdefghijklmnopqrstuvwxyz", "Team"):
        row = build_row(raw(name))
        assert "hunter2" not in repr(row) and "abcdefghijklmnopqrstuvwxyz" not in repr(row)
        assert ("<redacted>" in row["args"]) == (name[0] in "pB")
        assert ("<redacted>" in row["result"]) == (name[0] in "pB")
    assert LIST_PIECES.shaped - shaped >= 3  # the answers were made by shape


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=6) | st.sampled_from(
    [b"a", b"AU=", b"x y", b" x", b"x ", b"", b"a\nb", b'a"', b"a>", b"=", b'="', b'="x', b'x"\n="y', b">x",
     b"<", b"\\", b"&", b"\xc3\xa9"])),
    min_size=1, max_size=6))
def test_changed_spots_are_read_as_plain_values_as_one_by_one(spots) -> None:
    """shapes._plain_values (the changed spots at once, in C) says what _PLAIN_JSON says of each."""
    made = [(b">" + v + b"<") if text else (b'="' + v + b'"') for text, v in spots]
    if any(shapes._SPOTS.fullmatch(m) is None for m in made):
        return  # not a spot the split makes
    expected = [v.decode("ascii") for _, v in spots] if all(
        shapes._PLAIN_JSON.fullmatch(v) is not None for _, v in spots) else None
    kinds = bytes(m[0] for m in made)
    assert shapes._plain_values(b"\n".join(made), kinds) == expected


def test_piece_shapes_are_forgotten_past_their_bound(monkeypatch) -> None:
    """The lists' piece shapes are bounded (logpieces.SHAPE_BYTES); forgetting them changes no row."""
    from test_log_pieces import LISTS, assert_as_whole
    from ucsproxy import logpieces

    monkeypatch.setattr(logpieces, "SHAPE_BYTES", 1)
    monkeypatch.setattr(logpieces, "_SHAPE_BYTES", 0)
    pieces = ListPieces()
    for body in LISTS:
        assert_as_whole(pieces.answer(body, CT, None), body)
        assert sum(len(s) for frame in pieces._frames.values() for s in frame.shapes.values()) <= 2

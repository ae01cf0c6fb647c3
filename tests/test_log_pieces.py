"""Item-list answers built from the pieces seen before (ucsproxy.logpieces): what the log stores
is what decoding the whole body gives, for the lists of a mailbox that grows and for bodies
written in every odd way the cut must refuse or read right."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucsproxy import codec, logpieces, logrow
from ucsproxy import records as R
from ucsproxy.logpieces import ListColumns, ListPieces, cut
from ucsproxy.logrow import LoggedAnswer, logged_answer
from ucsproxy.model import UcsModel
from ucsproxy.records import EwsRequest, EwsResponse, SoapHeaders
from ucsproxy.redact import has_trigger_word
from ucsproxy.service import UcsService

MB = "kim.akers@contoso.com"
CT = "text/xml; charset=utf-8"


def whole(body: bytes, content_type: str | None = CT, operation: str | None = None):
    decoded = codec.decode_response(body, operation, content_type)
    return logged_answer(decoded) if isinstance(decoded, EwsResponse) else decoded


def columns(found):
    """The LoggedAnswer (or DecodeError) of what ListPieces.answer gave, as logrow makes it."""
    answer = found.answer
    if isinstance(answer, ListColumns):
        return LoggedAnswer(*answer)
    return logged_answer(answer) if isinstance(answer, EwsResponse) else answer


def assert_as_whole(found, body: bytes, content_type: str | None = CT, errors: str = "strict") -> None:
    """What ListPieces.answer gave is what a whole decode of ``body`` gives, and a part it calls
    clean holds no redaction trigger word (``errors``: how the body is read as text for that)."""
    assert columns(found) == whole(body, content_type)
    if found.body_clean:
        assert not has_trigger_word(body.decode("utf-8", errors))
    if found.result_clean:
        assert not has_trigger_word(found.answer.result)


def growing_lists(contacts: int = 12, seed: int = 3):
    """GetImItemList and GetImItems answers of a mailbox that grows by a contact each time."""
    service = UcsService(UcsModel(seed=seed))
    m = service.model
    group = m.add_im_group(MB, "Team & <friends>").exchange_store_id
    out = []
    for n in range(contacts):
        m.add_new_im_contact_to_group(MB, f"sip:c{n}@contoso.com", f"Contact {n} Ñ", group)
        if n % 4 == 3:
            m.add_im_group(MB, f"Group {n}")
        for body in (R.GetImItemList(), R.GetImItems(group_ids=(group,))):
            request = EwsRequest(body.OPERATION, SoapHeaders("Exchange2013"), body)
            answer = service.handle(request, user=MB)
            assert isinstance(answer, R.UcsResponse)
            out.append(codec.encode_response(answer))
    return out


LISTS = growing_lists()


def test_a_growing_list_is_built_from_its_pieces_as_decoding_builds_it():
    pieces = ListPieces()
    for body in LISTS:
        assert_as_whole(pieces.answer(body, CT, None), body)
    # Two frames (GetImItemList, GetImItems) decoded whole once each; the rest from pieces,
    # each list adding a contact decoding only what is new.
    assert pieces.whole == 2
    assert pieces.partly + pieces.reused == len(LISTS) - 2
    again = [pieces.answer(body, CT, None) for body in LISTS]
    assert pieces.reused >= len(LISTS)
    assert [columns(a) for a in again] == [whole(body) for body in LISTS]
    assert all(a.body_clean and a.result_clean for a in again)


def test_new_pieces_are_decoded_alone(monkeypatch):
    pieces = ListPieces()
    for body in LISTS[:-2]:
        pieces.answer(body, CT, None)
    sizes = []
    real = codec.decode_response

    def spy(body, *a, **k):
        sizes.append(len(body))
        return real(body, *a, **k)

    monkeypatch.setattr(codec, "decode_response", spy)
    found = pieces.answer(LISTS[-2], CT, None)
    monkeypatch.undo()
    assert columns(found) == whole(LISTS[-2])
    # One document: the frame, the group that gained a member and the new contact.
    assert len(sizes) == 1 and sizes[0] < len(LISTS[-2]) / 3


def test_pieces_at_the_places_of_the_last_list_are_told_by_their_bytes():
    """A list with as many pieces as the last one built in its frame is compared with it place by
    place (_Frame.last); a piece moved, changed, or given a secret at its place still gives what
    decoding the whole body gives."""
    pieces = ListPieces()
    body = LISTS[-2]
    c = cut(body, CT, None)
    assert c is not None and c.document(list(c.pieces)) == body
    at = c.fields.index("personas")

    def with_personas(personas):
        return c.document([personas if k == at else list(chunks) for k, chunks in enumerate(c.pieces)])

    first, second, *rest = c.pieces[at]
    assert b"Contact 0" in first and b"Contact 1" in second
    bodies = [body, body, with_personas([second, first, *rest]), body,
              with_personas([first.replace(b"Contact 0", b"Contact X"), second, *rest]),
              with_personas([first, second.replace(b"Contact 1", b"password=hunter2"), *rest])]
    found = []
    for one in bodies:
        found.append(pieces.answer(one, CT, None))
        assert_as_whole(found[-1], one)
    (frame,) = pieces._frames.values()
    assert set(frame.last) == set(c.fields)
    assert pieces.whole == 1 and found[1].body_clean and not found[-1].body_clean


def test_a_secret_in_a_piece_is_never_called_clean():
    body = LISTS[-2].replace(b"Contact 3 ", b"Contact 3 password=Hunter2 ", 1)
    pieces = ListPieces()
    pieces.answer(LISTS[-2], CT, None)
    found = pieces.answer(body, CT, None)
    assert columns(found) == whole(body)
    assert not found.body_clean and not found.result_clean
    row_text = logrow.body_memo(logrow.DEFAULT_REDACTOR).answer(body, CT, None, None, True)
    assert "Hunter2" not in row_text.text and "Hunter2" not in row_text.json


def _persona_area(body: bytes) -> tuple[int, int]:
    start = body.index(b"<Personas")
    return start, body.index(b"</Personas>")


BASE = LISTS[-2]
P0 = BASE.index(b"<Persona>")
P1 = BASE.index(b"<Persona>", P0 + 1)
G0 = BASE.index(b"<ImGroup>")

# Ways of writing (or breaking) a list the cut must read right or refuse.
ODD = {
    "comment between personas": BASE[:P1] + b"<!-- a comment -->" + BASE[P1:],
    "comment in a persona": BASE[:P1 - 12] + b"<!--</Persona>-->" + BASE[P1 - 12:],
    "cdata in a name": BASE.replace(b"Contact 1 ", b"<![CDATA[Contact </Persona> 1]]> ", 1),
    "processing instruction": BASE[:P1] + b"<?pi x?>" + BASE[P1:],
    "whitespace between pieces": BASE.replace(b"</Persona><Persona>", b"</Persona>\n  <Persona>")
                                     .replace(b"</ImGroup><ImGroup>", b"</ImGroup>\r\n\t<ImGroup>"),
    "text between pieces": BASE[:P1] + b"stray" + BASE[P1:],
    "prefixed personas": BASE.replace(b"<Personas xmlns=", b"<Personas xmlns:t=")
                             .replace(b"<Persona>", b"<t:Persona>").replace(b"</Persona>", b"</t:Persona>"),
    "persona in another namespace": BASE.replace(b"<Persona>", b'<Persona xmlns="urn:other">', 1),
    "a persona inside a persona": BASE[:P1 - 10] + b"<Persona><PersonaId Id=\"x\"/></Persona>" + BASE[P1 - 10:],
    "an empty persona": BASE[:P1] + b"<Persona/>" + BASE[P1:],
    "a persona with attributes": BASE.replace(b"<Persona>", b'<Persona a="1">', 1),
    "end tag with a space": BASE.replace(b"</Persona>", b"</Persona >", 1),
    "second personas container": BASE.replace(b"<ResponseCode>", b"<Personas/><ResponseCode>", 1),
    "personas container in a group": BASE[:G0 + 9] + b"<Personas/>" + BASE[G0 + 9:],
    "no groups": re.sub(rb"<Groups.*?</Groups>", b"", BASE, flags=re.S),
    "empty groups": re.sub(rb"(<Groups[^>]*>).*?(</Groups>)", rb"\1\2", BASE, flags=re.S),
    "self-closed groups": re.sub(rb"<Groups([^>]*)>.*?</Groups>", rb"<Groups\1/>", BASE, flags=re.S),
    "self-closed personas": re.sub(rb"<Personas([^>]*)>.*?</Personas>", rb"<Personas\1/>", BASE, flags=re.S),
    "truncated": BASE[:-40],
    "cut inside a persona": BASE[:P1 + 100],
    "latin-1 byte": BASE.replace(b"Contact 1 \xc3\x91", b"Contact 1 \xd1", 1),
    "utf-16 declared": BASE.replace(b'encoding="utf-8"', b'encoding="utf-16"', 1),
    "no declaration": BASE[BASE.index(b"?>") + 2:],
    "a persona without an id": re.sub(rb"<PersonaId [^>]*/>", b"", BASE, count=1),
    "a broken boolean": BASE.replace(b"<IsHidden>false</IsHidden>", b"<IsHidden>maybe</IsHidden>", 1),
    "an entity": BASE.replace(b"Contact 1 ", b"Contact &amp; &#x31; ", 1),
    "undefined entity": BASE.replace(b"Contact 1 ", b"Contact &nbsp; ", 1),
    "a dtd": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "Contact">]>' + BASE[BASE.index(b"?>") + 2:],
    "personas before groups": None,  # filled below
    "a fault": (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
                b'<faultcode>s:Client</faultcode><faultstring>no</faultstring></s:Fault></s:Body></s:Envelope>'),
}
_g = re.search(rb"<Groups.*?</Groups>", BASE, flags=re.S)
_p = re.search(rb"<Personas.*?</Personas>", BASE, flags=re.S)
assert _g and _p
ODD["personas before groups"] = BASE[:_g.start()] + _p.group(0) + _g.group(0) + BASE[_p.end():]


@pytest.mark.parametrize("name", sorted(ODD))
@pytest.mark.parametrize("content_type", [CT, "text/xml; charset=iso-8859-1", None])
def test_an_odd_body_gives_what_decoding_it_whole_gives(name, content_type):
    pieces = ListPieces()
    for body in LISTS:  # the usual frames and pieces learnt first
        pieces.answer(body, content_type, None)
    body = ODD[name]
    assert body != BASE
    assert columns(pieces.answer(body, content_type, None)) == whole(body, content_type)
    # Learnt from (when it was cut at all), then read again.
    assert columns(pieces.answer(body, content_type, None)) == whole(body, content_type)
    for other in LISTS[-4:]:
        assert columns(pieces.answer(other, content_type, None)) == whole(other, content_type)


def test_the_cut_refuses_what_it_cannot_read_without_a_parser():
    for name in ("comment between personas", "comment in a persona", "cdata in a name", "processing instruction",
                 "text between pieces", "a persona with attributes", "end tag with a space",
                 "latin-1 byte", "a dtd", "persona in another namespace"):
        assert cut(ODD[name], CT, None) is None, name
    assert cut(BASE, "text/xml; charset=iso-8859-1", None) is None
    assert cut(BASE, CT, None) is not None
    assert cut(ODD["whitespace between pieces"], CT, None).key == cut(BASE, CT, None).key


_SNIPPETS = st.sampled_from([b"<!--c-->", b"<Persona>", b"</Persona>", b"<ImGroup>", b"</ImGroup>", b" ", b"\n",
                             b"<Personas>", b"</Personas>", b'<x:Persona xmlns:x="urn:x"/>', b'"', b"&amp;",
                             b"password=Hunter2", b"\xff", b"<t:Persona>", b"<Groups/>", b"<?x?>", b"]]>",
                             b"<PersonaId Id=\"q\"/>", b"<DisplayName>z</DisplayName>"])
_SHARED = ListPieces()
for _body in LISTS:
    _SHARED.answer(_body, CT, None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LISTS), st.lists(st.tuples(st.floats(0, 1), _SNIPPETS), max_size=3),
       st.lists(st.tuples(st.floats(0, 1), st.integers(1, 60)), max_size=1))
def test_a_changed_body_gives_what_decoding_it_whole_gives(body, inserts, cuts):
    for where, length in cuts:
        at = int(where * len(body))
        body = body[:at] + body[at + length:]
    for where, snippet in inserts:
        at = int(where * len(body))
        body = body[:at] + snippet + body[at:]
    assert_as_whole(_SHARED.answer(body, CT, None), body)


def test_the_pieces_are_bounded():
    pieces = ListPieces(max_bytes=20_000, max_frames=1)
    for body in LISTS:
        assert columns(pieces.answer(body, CT, None)) == whole(body)
        assert len(pieces._frames) <= 1
        assert pieces.size <= 20_000 + len(body) * 2
    assert logpieces.LIST_PIECES is not pieces

"""Requests made from a kept request of the same shape (ucsproxy.shapes) are the requests a full
decode gives, for plain names and ids, and bodies the shape memo must not take apart are decoded in full."""

from __future__ import annotations

import random

import pytest

from ucsproxy import core, logrow, shapes
from ucsproxy.records import EwsRequest

NS = ('xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
      'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
      'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"')
CT = "text/xml; charset=utf-8"


def envelope(body: str, header: str = '<t:RequestServerVersion Version="Exchange2013"/>',
             declaration: str = '<?xml version="1.0" encoding="utf-8"?>') -> bytes:
    return (f"{declaration}<soap:Envelope {NS}><soap:Header>{header}</soap:Header>"
            f"<soap:Body>{body}</soap:Body></soap:Envelope>").encode()


def full(body: bytes, checked: bool = True):
    return core._decode(body, None, CT, checked)


def run(bodies: list[bytes], checked: bool = True) -> int:
    """Decode each body through a fresh shape memo and compare with the full decode; returns how
    many were made from a kept request."""
    memo = shapes.ShapeMemo()
    made_count = 0
    for body in bodies:
        made, token = memo.get(body, (None, CT, checked), lambda b: full(b, checked))
        expected = full(body, checked)
        if made is None:
            memo.put(token, expected)
        else:
            made_count += 1
            assert made == expected, body
            assert repr(made) == repr(expected)
            assert logrow.logged_request(made) == logrow.logged_request(expected)
    return made_count


PLAIN = "abcXYZ019 -_.+/=@:;,!#$%'()*?[]^`{|}~"


def plain(rng: random.Random) -> str:
    while True:
        text = "".join(rng.choice(PLAIN) for _ in range(rng.randint(1, 24))).strip()
        if text:
            return text


def item_id(name: str, rng: random.Random, change_key: bool) -> str:
    ck = f' ChangeKey="{plain(rng)}"' if change_key else ""
    return f'<m:{name} Id="{plain(rng)}"{ck}/>'


MAKERS = {
    "AddImGroup": lambda r: f"<m:AddImGroup><m:DisplayName>{plain(r)}</m:DisplayName></m:AddImGroup>",
    "RemoveImGroup": lambda r: f"<m:RemoveImGroup>{item_id('GroupId', r, False)}</m:RemoveImGroup>",
    "RemoveImGroupCK": lambda r: f"<m:RemoveImGroup>{item_id('GroupId', r, True)}</m:RemoveImGroup>",
    "SetImGroup": lambda r: (f"<m:SetImGroup>{item_id('GroupId', r, True)}<m:NewDisplayName>{plain(r)}"
                             "</m:NewDisplayName></m:SetImGroup>"),
    "AddNewImContactToGroup": lambda r: (
        f"<m:AddNewImContactToGroup><m:ImAddress>sip:{plain(r)}</m:ImAddress><m:DisplayName>{plain(r)}"
        f"</m:DisplayName>{item_id('GroupId', r, False)}</m:AddNewImContactToGroup>"),
    "AddImContactToGroup": lambda r: (f"<m:AddImContactToGroup>{item_id('ContactId', r, True)}"
                                      f"{item_id('GroupId', r, True)}</m:AddImContactToGroup>"),
    "RemoveImContactFromGroup": lambda r: (f"<m:RemoveImContactFromGroup>{item_id('ContactId', r, False)}"
                                           f"{item_id('GroupId', r, False)}</m:RemoveImContactFromGroup>"),
    "RemoveContactFromImList": lambda r: f"<m:RemoveContactFromImList>{item_id('ContactId', r, False)}</m:RemoveContactFromImList>",
    "AddDistributionGroupToImList": lambda r: (
        f"<m:AddDistributionGroupToImList><m:SmtpAddress>{plain(r)}@contoso.com</m:SmtpAddress>"
        f"<m:DisplayName>{plain(r)}</m:DisplayName></m:AddDistributionGroupToImList>"),
    "RemoveDistributionGroupFromImList": lambda r: (
        f"<m:RemoveDistributionGroupFromImList>{item_id('GroupId', r, False)}</m:RemoveDistributionGroupFromImList>"),
}


@pytest.mark.parametrize("operation", sorted(MAKERS))
@pytest.mark.parametrize("checked", [True, False])
def test_plain_names_and_ids_are_put_into_the_kept_request(operation, checked):
    rng = random.Random(operation)
    bodies = [envelope(MAKERS[operation](rng)) for _ in range(40)]
    assert all(isinstance(full(b), EwsRequest) for b in bodies)
    assert run(bodies, checked) >= 30  # the memo is used, not only safe


def test_a_repeated_value_or_one_in_the_headers_is_not_taken_for_the_field():
    name = "Exchange2013"  # also the RequestServerVersion
    bodies = [envelope(f"<m:AddImGroup><m:DisplayName>{name}</m:DisplayName></m:AddImGroup>"),
              envelope("<m:AddImGroup><m:DisplayName>Exchange2013</m:DisplayName></m:AddImGroup>",
                       '<t:RequestServerVersion Version="Exchange2010"/>'),
              envelope("<m:AddImGroup><m:DisplayName>Other</m:DisplayName></m:AddImGroup>")]
    run(bodies)
    # a culture header with the group's id: changing the header must not change the id
    header = '<t:RequestServerVersion Version="Exchange2013"/><t:MailboxCulture>{}</t:MailboxCulture>'
    bodies = [envelope("<m:RemoveImGroup><m:GroupId Id='G1'/></m:RemoveImGroup>", header.format("zz")),
              envelope("<m:RemoveImGroup><m:GroupId Id='&#71;1'/></m:RemoveImGroup>", header.format("G1")),
              envelope("<m:RemoveImGroup><m:GroupId Id='&#71;1'/></m:RemoveImGroup>", header.format("G2")),
              envelope('<m:RemoveImGroup><m:GroupId Id="G1" ChangeKey="G1"/></m:RemoveImGroup>'),
              envelope('<m:RemoveImGroup><m:GroupId Id="G1" ChangeKey="G2"/></m:RemoveImGroup>'),
              envelope('<m:RemoveImGroup><m:GroupId Id="G3" ChangeKey="G2"/></m:RemoveImGroup>')]
    run(bodies)


@pytest.mark.parametrize("value", [
    "", " ", " lead", "trail ", "a&amp;b", "a&#60;b", "caf\u00e9", "tab\there", "line\nbreak", "a]]>b", "a>b",
    "quote\"d", "\u3042",
])
def test_values_that_are_not_plain_are_decoded_in_full(value):
    template = "<m:AddImGroup><m:DisplayName>{}</m:DisplayName></m:AddImGroup>"
    first = envelope(template.format("Friends"))
    other = envelope(template.format(value).replace('"', "&quot;") if value == 'quote"d' else template.format(value))
    memo = shapes.ShapeMemo()
    _, token = memo.get(first, (None, CT, True), full)
    memo.put(token, full(first))
    made, _ = memo.get(other, (None, CT, True), full)
    assert made is None
    run([first, other])


@pytest.mark.parametrize("body", [
    envelope("<m:AddImGroup><m:DisplayName><!-- x -->Friends</m:DisplayName></m:AddImGroup>"),
    envelope("<m:AddImGroup><m:DisplayName><![CDATA[Friends]]></m:DisplayName></m:AddImGroup>"),
    envelope("<m:AddImGroup><?pi x?><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>"),
    envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>", declaration="\ufeff<?xml version=\"1.0\"?>"),
    b"x" * (shapes.MAX_BODY + 1),
])
def test_comments_cdata_instructions_and_big_bodies_are_never_taken_apart(body):
    assert shapes._parts(body) is None


def test_a_changed_version_namespace_or_operation_is_decoded_in_full():
    add = "<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>"
    bodies = [envelope(add), envelope(add, '<t:RequestServerVersion Version="Exchange2007"/>'),
              envelope(add, '<t:RequestServerVersion Version="Nonsense"/>'),
              envelope(add).replace(b"2006/messages", b"2006/message"),
              envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>").replace(
                  b'encoding="utf-8"', b'encoding="ascii"'),
              envelope("<m:RemoveImGroup><m:DisplayName>Friends</m:DisplayName></m:RemoveImGroup>")]
    assert run(bodies) == 0
    assert run(bodies, checked=False) == 0


def test_the_core_decodes_by_shape_and_gives_what_a_full_decode_gives():
    c = core.UcsCore()
    c.mode = "mock"
    c.build_model(seed=1)
    headers = [("Content-Type", CT)]
    for i in range(20):
        body = envelope(f"<m:AddImGroup><m:DisplayName>Shape test {i}</m:DisplayName></m:AddImGroup>")
        assert c.decode(body, headers) == full(body)


def test_the_hot_spot_shortcut_gives_what_a_full_decode_gives_for_any_byte_change():
    """Once requests of a shape differ in one spot alone (the next AddImGroup's name), the memo
    looks at the bytes before and after that spot's value without splitting the body: bytes
    changed, inserted or removed anywhere (the value, its delimiters, the rest) either give the
    full decode's request or fall back to the split."""
    rng = random.Random(15)
    template = "<m:AddImGroup><m:DisplayName>{}</m:DisplayName></m:AddImGroup>"
    memo = shapes.ShapeMemo()
    context = (None, CT, True)

    def check(body: bytes) -> EwsRequest | None:
        made, token = memo.get(body, context, full)
        expected = full(body)
        if made is None:
            memo.put(token, expected)
        else:
            assert made == expected, body
            assert repr(made) == repr(expected)
            # the args log column a made request may come with is the full decode's
            assert logrow.logged_request(made) == logrow.logged_request(expected)
        return made

    check(envelope(template.format("Friends")))
    check(envelope(template.format("Family")))  # one spot changed: it is hot now
    hot = memo._hot[context].shapes
    assert len(hot) == 1 and hot[0].hot is not None
    shortcut = 0
    for _ in range(150):
        body = envelope(template.format(plain(rng) + rng.choice(["", "\\", "\\n"])))
        made = check(body)
        assert made is not None
        shortcut += 1
        # and a change anywhere else: a byte replaced, inserted or dropped
        data = bytearray(body)
        at = rng.randrange(len(data))
        how = rng.choice("rid")
        if how == "r":
            data[at] = rng.choice(b'<>"&= x/\'!?\x00\xc3')
        elif how == "i":
            data[at:at] = bytes([rng.choice(b'<>"&= x/\'!?')])
        else:
            del data[at]
        check(bytes(data))
    assert shortcut == 150
    # a value that spans the delimiters, or is not plain, is never put into the field
    for value in ("a</m:DisplayName><m:DisplayName>b", "", " x", "x ", "a&amp;b", "caf\u00e9", 'q"q'):
        body = envelope(template.format(value))
        assert hot[0].made_at_hot(body) is None
        check(body)

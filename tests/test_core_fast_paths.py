"""The core's shortcuts for a client's Add+Remove pairs give what the slow paths they replace give:
the mailbox's group index (names and limit count) is what counting every group says, after any
sequence of operations; the service finds each request's model call by its record's class as the
pattern match does; the core reads a request's headers once for decoding and the mailbox; the hot
shapes, found by the end of a body, make the request a full decode makes."""

from __future__ import annotations

import dataclasses
import random

import pytest

from ucsproxy import core, service, shapes
from ucsproxy.model import UcsError, UcsModel
from ucsproxy.model.mailbox import _GroupIndex
from ucsproxy.model.persistence import mailbox_from_json, mailbox_to_json
from ucsproxy.model.policy import counts_toward_group_limit, same_display_name
from ucsproxy.records import (
    AddDistributionGroupToImList,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    GetImItemList,
    ItemId,
    RemoveDistributionGroupFromImList,
    RemoveImGroup,
    SetImGroup,
    SoapHeaders,
    UcsRequest,
)

from test_shapes import CT, envelope, full

USER = "pairs@contoso.com"
NAMES = ["Friends", "friends", " Friends ", "FRIENDS", "Work", "Other Contacts", "other contacts", "Straße", "STRASSE",
         "Favorites", "Tagged", "x"]


def _index_as_counted(mb) -> tuple[dict[str, int], int]:
    fresh = _GroupIndex(mb.groups.values())
    return fresh.names, fresh.counted


def _expected_add(mb, name: str) -> str | None:
    """What AddImGroup answers by the rules as written, counting every group (None: it succeeds)."""
    if any(same_display_name(g.display_name, name) for g in mb.groups.values()):
        return "ErrorImGroupDisplayNameAlreadyExists"
    if sum(1 for g in mb.groups.values() if counts_toward_group_limit(g.group_type)) >= mb.max_groups:
        return "ErrorImGroupLimitReached"
    return None


@pytest.mark.parametrize("seed", range(6))
def test_the_group_index_is_what_counting_every_group_gives_after_any_operations(seed):
    rng = random.Random(seed)
    model = UcsModel(seed=seed, max_groups=6)
    ids: list[str] = []
    snapshot = model.snapshot()
    for _ in range(300):
        mb = model.mailbox(USER)
        op = rng.choice(["add", "add", "add", "remove", "remove", "rename", "dg", "dgremove", "contact", "snapshot",
                         "restore", "json", "seed", "default"])
        try:
            if op == "add":
                name = rng.choice(NAMES)
                expected = _expected_add(mb, name)
                try:
                    group = model.add_im_group(USER, name)
                except UcsError as e:
                    assert e.code == expected, name
                else:
                    assert expected is None, name
                    assert group.exchange_store_id is not None
                    ids.append(group.exchange_store_id.id)
            elif op == "remove" and ids:
                model.remove_im_group(USER, ItemId(ids.pop(rng.randrange(len(ids)))))
            elif op == "rename" and ids:
                model.set_im_group(USER, ItemId(rng.choice(ids)), rng.choice(NAMES))
            elif op == "dg":
                group = model.add_distribution_group_to_im_list(USER, f"dl{rng.randrange(4)}@contoso.com",
                                                                rng.choice(NAMES))
                assert group.exchange_store_id is not None
                ids.append(group.exchange_store_id.id)
            elif op == "dgremove" and ids:
                model.remove_distribution_group_from_im_list(USER, ItemId(rng.choice(ids)))
            elif op == "contact":
                target = ItemId(rng.choice(ids)) if ids and rng.random() < 0.5 else None
                model.add_new_im_contact_to_group(USER, f"sip:c{rng.randrange(5)}@contoso.com", "C", target)
            elif op == "snapshot":
                snapshot = model.snapshot()
            elif op == "restore":
                model.restore(snapshot)
            elif op == "json":
                model.put_mailbox(mailbox_from_json(mailbox_to_json(mb)))
            elif op == "seed":
                model.seed_mailbox(USER, model.get_im_item_list(USER))
            elif op == "default":
                mb.default_group_id("IPM.DistList.MOC.Favorites")
        except UcsError:
            pass
        mb = model.mailbox(USER)
        ids = [i for i in ids if i in mb.groups]
        if mb._index is not None:
            assert (mb._index.names, mb._index.counted) == _index_as_counted(mb), op
        assert (mb._group_index().names, mb._group_index().counted) == _index_as_counted(mb), op


def test_every_ucs_request_class_has_its_model_call_by_class():
    assert set(service._CALLS) == set(UcsRequest.__args__)  # type: ignore[attr-defined]


def test_a_subclass_of_a_request_record_gets_its_base_records_model_call():
    """A request built by hand from a subclass of a record is served as its base record is: the
    same results and the same errors, request after request, as two models with the same seed."""
    sub, base = service.UcsService(UcsModel(seed=3)), service.UcsService(UcsModel(seed=3))
    default = sub.model.get_im_item_list(USER).groups[0].exchange_store_id
    requests: list = [AddImGroup("A"), AddImGroup("a"), GetImItemList(), SetImGroup(ItemId("AAMkx"), "B"),
                      AddNewImContactToGroup("sip:bob@contoso.com", "Bob", default),
                      AddDistributionGroupToImList("dl@contoso.com", "DL"), RemoveDistributionGroupFromImList(ItemId("")),
                      RemoveImGroup(ItemId("AAMkAGI2TG93AAA=")), RemoveImGroup(default)]
    subclasses: dict[type, type] = {}
    for body in requests:
        kind = type(body)
        subclass = subclasses.setdefault(kind, type(f"My{kind.__name__}", (kind,), {}))
        mine = subclass(*(getattr(body, f.name) for f in dataclasses.fields(body)))
        got: list[object] = []
        for service_, request in ((sub, mine), (base, body)):
            try:
                got.append(service_._dispatch(USER, request))
            except UcsError as e:
                got.append(e.code)
        assert got[0] == got[1], body

    class NotARequest:
        pass

    with pytest.raises(UcsError, match="no rule for NotARequest"):
        sub._dispatch(USER, NotARequest())  # type: ignore[arg-type]


HEADERS = [
    [("Content-Type", CT)],
    [("content-type", CT), ("SOAPAction", '"http://schemas.microsoft.com/exchange/services/2006/messages/AddImGroup"')],
    [("Content-Type", CT), ("Authorization", "Basic " + "YWxpY2VAY29udG9zby5jb206cHc=")],  # alice@contoso.com:pw
    [("Content-Type", CT), ("X-AnchorMailbox", "SMTP:Kim@Contoso.com"), ("Authorization", "Basic YWxpY2VAY29udG9zby5jb206cHc=")],
    [("Content-Type", "text/plain"), ("content-type", CT), ("authorization", "Basic Ym9iQGNvbnRvc28uY29tOng="),
     ("Authorization", "Basic YWxpY2VAY29udG9zby5jb206cHc="), ("x-anchormailbox", "")],
    [],
]
IMPERSONATED = ('<t:RequestServerVersion Version="Exchange2013"/><t:ExchangeImpersonation><t:ConnectingSID>'
                "<t:PrimarySmtpAddress>Lee@Contoso.com</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("lenient", [False, True])
def test_decode_and_mailbox_is_decode_then_mailbox(headers, lenient):
    bodies = [envelope("<m:AddImGroup><m:DisplayName>G</m:DisplayName></m:AddImGroup>"),
              envelope("<m:AddImGroup><m:DisplayName>G</m:DisplayName></m:AddImGroup>", header=IMPERSONATED),
              envelope("<m:GetFolder/>"), b"not xml", envelope("<m:AddImGroup/>")]
    served = core.UcsCore()
    served.mode = "mock"
    served.lenient = lenient
    served.build_model(seed=1)
    observed = core.UcsCore()  # record mode: no model, so no mailbox
    for c in (served, observed):
        for body in bodies:
            decoded, mailbox = c.decode_and_mailbox(body, headers)
            assert decoded == c.decode(body, headers)
            expected = c.mailbox(decoded, headers) if c.service is not None and isinstance(decoded, EwsRequest) \
                else None
            assert mailbox == expected


def test_hot_shapes_found_by_their_end_make_what_a_full_decode_makes(monkeypatch):
    """Several hot shapes in one context, some whose bytes after the value are shorter than the
    tail they are found by (a ChangeKey near the end of a body with short prefixes): each body is
    made from the right shape, or decoded in full, and equals the full decode."""
    ns = ('xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
          'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
          'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"')

    def short(body: str) -> bytes:
        return (f'<s:Envelope {ns}><s:Header><t:RequestServerVersion Version="Exchange2013"/></s:Header>'
                f"<s:Body>{body}</s:Body></s:Envelope>").encode()

    makers = [
        lambda v: envelope(f"<m:AddImGroup><m:DisplayName>{v}</m:DisplayName></m:AddImGroup>"),
        lambda v: envelope(f'<m:RemoveImGroup><m:GroupId Id="{v}"/></m:RemoveImGroup>'),
        lambda v: short(f'<m:RemoveImGroup><m:GroupId Id="AAMk1" ChangeKey="{v}"/></m:RemoveImGroup>'),
        lambda v: short(f'<m:SetImGroup><m:GroupId Id="AAMk2"/><m:NewDisplayName>{v}</m:NewDisplayName></m:SetImGroup>'),
        lambda v: short(f'<m:AddImGroup><m:DisplayName>{v}</m:DisplayName></m:AddImGroup>'),
    ]
    rng = random.Random(7)
    memo = shapes.ShapeMemo()
    context = (None, CT, True)
    made_count = 0
    for n in range(400):
        body = rng.choice(makers)(f"V{n}x{rng.randrange(1000)}")
        made, token = memo.get(body, context, full)
        expected = full(body)
        if made is None:
            memo.put(token, expected)
        else:
            made_count += 1
            assert made == expected and repr(made) == repr(expected), body
    hot = memo._hot[context]
    assert len(hot.shapes) == len(makers) and hot.short  # every shape is hot; some kept apart by their short end
    assert made_count > 350
    # Every shape hot: each next body is made at its hot spot, none split to be matched.
    split = shapes._parts
    splits = []

    def counted(*args):
        splits.append(args)
        return split(*args)

    monkeypatch.setattr(shapes, "_parts", counted)
    for n in range(100):
        body = makers[n % len(makers)](f"W{n}")
        made, token = memo.get(body, context, full)
        assert made == full(body) and token is None, body
    assert not splits


def test_a_request_made_at_a_hot_spot_is_an_ews_request_as_init_makes_it():
    body = envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>")
    request = full(body)
    made = shapes._request_with(request, [(("display_name",), "Family")])
    assert made == EwsRequest(request.operation, request.headers, AddImGroup("Family"))
    assert type(made.headers) is SoapHeaders and made.__dict__.keys() == request.__dict__.keys()


def test_ids_and_change_keys_are_base64_of_their_bytes():
    """The pieces kept per guid make the ids and change keys the plain formula makes, also after the
    guid is replaced (persistence does) and for a guid of another length."""
    import base64
    import struct

    from ucsproxy.model.ids import CONTACT_CK, GROUP_CK, Ids

    ids = Ids(5, USER)
    for guid in (ids.guid, bytes(range(16)), b"\xff" * 17):
        ids.guid = guid
        for _ in range(3):
            before = ids.counter
            group, contact, persona = ids.group(), ids.contact(), ids.persona()
            assert group == base64.b64encode(Ids.ITEM_PREFIX + guid + b"\x01\x00" + struct.pack(">I", before + 1)).decode()
            assert contact == base64.b64encode(Ids.ITEM_PREFIX + guid + b"\x02\x00" + struct.pack(">I", before + 2)).decode()
            assert persona == base64.b64encode(Ids.PERSONA_PREFIX + guid + b"\x03\x00"
                                               + struct.pack(">I", before + 3)).decode()
        for kind in (GROUP_CK, CONTACT_CK):
            for version in (0, 1, 300, 2**32 - 1):
                assert ids.change_key(kind, version) == base64.b64encode(
                    bytes([kind]) + b"\x00\x00\x00\x16\x00\x00\x00" + guid + struct.pack(">I", version)).decode()


@pytest.mark.parametrize("seed", range(4))
def test_an_answer_template_fills_as_its_pieces_joined(seed):
    from ucsproxy.answers import _Template

    rng = random.Random(seed)
    probes = ("P0probe", "P1probe", "P2probe")
    for _ in range(50):
        order = rng.sample(range(3), 3)
        cuts = ["".join(rng.choice("ab%s{}\\\"<>") for _ in range(rng.randrange(6))) for _ in range(4)]
        text = cuts[0] + "".join(probes[n] + cuts[i + 1] for i, n in enumerate(order))
        values = tuple("".join(rng.choice("xy%s%%(") for _ in range(rng.randrange(1, 5))) for _ in range(3))
        expected = text
        for probe, value in zip(probes, values):
            expected = expected.replace(probe, value)
        assert _Template(text, probes).fill(values) == expected


class _PayloadLog:
    """A log whose batches are framed as a writer process's pipe gets them (the payload made, not sent)."""

    written = 0

    def __init__(self) -> None:
        from ucsproxy import logwriter

        self.payloads: list[bytes | None] = []
        self.marshal_payload = logwriter.marshal_payload

    def submit(self, raw) -> None:
        self.marshal_payload([raw])

    def submit_many(self, raws) -> None:
        self.payloads.append(self.marshal_payload(raws))

    def close(self) -> int:
        return 0


def test_journal_entries_kept_as_their_place_in_the_log_frame_show_what_whole_ones_show():
    """Exchanges handed to the log in batches are kept by the journal as their places in the
    batch's frame payload (not packed again): their rows are the rows of the same exchanges kept
    whole, for mock answers, errors, unreadable bodies, a value marshal refuses (the batch is
    pickled: packed alone), a body too big to pack, and a batch that never reached the log."""
    import time

    from journal_tee import JournalTee
    from ucsproxy.front import core_from_options
    from ucsproxy.logrow import RawExchange
    from ucsproxy.runner import mock_options

    class Name(str):
        pass

    c = core_from_options(dict(mock_options(seed=0), ucs_db="", listen_host="127.0.0.1"), writer="thread")
    try:
        log = _PayloadLog()
        c.store = log  # type: ignore[assignment]
        shared = c.journal
        assert shared is not None
        tee = JournalTee(shared)
        whole = tee.whole
        c.journal = tee  # type: ignore[assignment]
        add = "<m:AddImGroup><m:DisplayName>{}</m:DisplayName></m:AddImGroup>"
        bodies = [envelope(add.format(n)) for n in ("Friends", "a&amp;b", "caf\u00e9", "Friends", "back\\slash")]
        bodies += [envelope("<m:GetImItemList/>"), b"<not xml", envelope(add.format("x" * 20000)),
                   envelope("<m:GetImItemList/>", header=IMPERSONATED), envelope("<m:GetFolder/>")]
        batch: list = []
        for n, body in enumerate(bodies * 3):
            headers = [("Content-Type", "text/xml"), ("Authorization", "Basic YWxpY2VAY29udG9zby5jb206cHc=")]
            if n == 12:
                headers.append(("X-Name", Name("a str subclass")))  # marshal refuses it: that batch is pickled
            decoded, mailbox = c.decode_and_mailbox(body, headers)
            answer = c.answer("POST", "/EWS/Exchange.asmx", headers, decoded, mailbox)
            assert answer is not None
            c.log_exchange(RawExchange(c.mode, time.time(), 1.0, "127.0.0.1:1", None, "POST", "/EWS/Exchange.asmx",
                                       answer.status, headers, body, list(answer.headers), answer.body, None, None,
                                       decoded, answer.logged(answer.body), mailbox=mailbox), None, batch)
            if len(batch) == 4 or n == len(bodies) * 3 - 2:
                c.submit_batch(batch)
                batch = []
        assert len(batch) == 1  # never handed over: still kept as it came
        assert None in log.payloads and any(p is not None for p in log.payloads)
        entries = list(shared._entries)
        assert sum(e.index >= 0 for e in entries) >= 15
        assert sum(e.index < 0 and e.packed is not None for e in entries) >= 1  # packed alone (the pickled batch)
        assert entries[-1].raw is not None
        rows = shared.rows(bodies=True)
        assert len(rows) == len(bodies) * 3
        assert rows == whole.rows(bodies=True)
        assert {r["operation"] for r in rows} >= {"AddImGroup", "GetImItemList", "GetFolder"}
    finally:
        c.journal = None
        c.store = None
        c.shutdown()


def test_the_mock_answers_are_answers_as_init_makes_them():
    from ucsproxy import answers
    from ucsproxy.records import EwsResponse

    svc = service.UcsService(UcsModel(seed=1))
    request = full(envelope("<m:AddImGroup><m:DisplayName>Friends</m:DisplayName></m:AddImGroup>"))
    group = svc.handle(request)
    gone = svc.handle(full(envelope(
        f'<m:RemoveImGroup><m:GroupId Id="{group.payload.exchange_store_id.id}"/></m:RemoveImGroup>')))
    for response in (group, gone):
        made = answers.service_answer(response)
        assert isinstance(made.decoded, EwsResponse)
        expected = answers.Answer(200, list(answers.XML_HEADERS.items()), made.body, decoded=made.decoded)
        assert made == expected and repr(made) == repr(expected) and list(vars(made)) == list(vars(expected))

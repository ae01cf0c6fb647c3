"""Shadow mode (``ucsproxy record --shadow``): where does Exchange differ from the model?

Alongside the real traffic, each mailbox has a model seeded from the first
successful GetImItemList answer Exchange gives it (as stateful replay seeds one
from a recording). Every later UCS request goes to the model too, and the
model's answer is compared with Exchange's, decoded, leaving ids, change keys
and times aside: the ResponseClass / ResponseCode, and the groups and personas
of the payload (names, types, addresses, who is in which group).

Whatever the comparison says, the model then takes on Exchange's outcome (its
state is put back as it was and Exchange's answer is applied the way
``replay.build_stateful_model`` applies a recorded one, keeping Exchange's ids),
so one divergence does not cascade into every later request. A GetImItemList
answer re-seeds the mailbox after being compared.

Not compared: requests before a mailbox was seeded, answers a fault rule made
(Exchange never saw the request), answers that do not decode (a truncated body:
the mailbox waits for the next GetImItemList to be seeded again).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from . import codec
from . import protocol as P
from .logrow import header, request_user
from .faults.actions import ACTIONS
from .records import DecodeError, EwsRequest, EwsResponse, ImGroup, ImItemList, Persona, SoapFault, UcsResponse

log = logging.getLogger("ucsproxy")

MAX_TEXT = 300
#: Operations whose answer carries what they made: the model adopts it with Exchange's ids.
_ADOPTING = frozenset({"AddImGroup", "AddDistributionGroupToImList", "AddNewImContactToGroup", "GetImItems"})


def _group_key(g: ImGroup) -> str:
    kind = (g.group_type or "?").rsplit(".", 1)[-1]
    return f"group '{g.display_name}' ({kind}{', ' + g.smtp_address if g.smtp_address else ''})"


def _persona_key(p: Persona) -> str:
    return f"persona {p.im_address or p.display_name or '?'}" + (
        f" '{p.display_name}'" if p.im_address and p.display_name else "")


def _member_labels(items: ImItemList) -> dict[str, str]:
    labels: dict[str, str] = {}
    for p in items.personas:
        label = p.im_address or p.display_name or "?"
        labels[p.persona_id.id] = label
        for a in p.attributions:
            if a.source_id is not None:
                labels[a.source_id.id] = label
    return labels


def _items(payload: Any) -> Counter:
    """A payload as a multiset of readable facts, ids and change keys and times left out."""
    facts: Counter = Counter()
    if isinstance(payload, ImGroup):
        facts[_group_key(payload)] += 1
    elif isinstance(payload, Persona):
        facts[_persona_key(payload)] += 1
    elif isinstance(payload, ImItemList):
        labels = _member_labels(payload)
        for g in payload.groups:
            facts[_group_key(g)] += 1
            members = sorted(labels.get(m.id, "an unknown contact") for m in g.member_correlation_key)
            for m in members:
                facts[f"{m} in {_group_key(g)}"] += 1
        for p in payload.personas:
            facts[_persona_key(p)] += 1
    return facts


def _outcome(answer: UcsResponse | SoapFault | EwsResponse | None) -> tuple[str, str, Any]:
    """(ResponseClass, ResponseCode, payload) of an answer, the model's or Exchange's."""
    if isinstance(answer, SoapFault):
        return "Fault", answer.response_code or answer.faultcode, None
    if isinstance(answer, EwsResponse):
        if answer.fault is not None:
            return _outcome(answer.fault)
        answer = answer.message
    if answer is None:
        return "?", "?", None
    return answer.response_class, answer.response_code, answer.payload


def compare(exchange: Any, model: Any) -> str | None:
    """How Exchange's answer differs from the model's, in a sentence; None when they agree."""
    e_class, e_code, e_payload = _outcome(exchange)
    m_class, m_code, m_payload = _outcome(model)
    if (e_class, e_code) != (m_class, m_code):
        return f"Exchange said {e_code}, the model said {m_code}"
    e_items, m_items = _items(e_payload), _items(m_payload)
    if e_items == m_items:
        return None
    parts = []
    only_e = sorted((e_items - m_items).elements())
    only_m = sorted((m_items - e_items).elements())
    if only_e:
        parts.append("only in Exchange's answer: " + "; ".join(only_e))
    if only_m:
        parts.append("only in the model's: " + "; ".join(only_m))
    text = ", ".join(parts)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class ShadowModel:
    """One model per mailbox, fed by the exchanges a record proxy sees."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}  # mailbox -> UcsModel holding that one mailbox
        self.compared = 0
        self.diverged = 0

    def mailboxes(self) -> list[str]:
        return sorted(self._models)

    def model(self, mailbox: str):
        return self._models.get(mailbox)

    def observe(self, raw, summary=None) -> str | None:
        """Compare one finished exchange (a RawExchange); sets and returns ``raw.divergence``."""
        divergence = self._observe(raw)
        if divergence is not None:
            self.diverged += 1
            try:
                raw.divergence = divergence
            except AttributeError:  # a RawExchange without the column (should not happen)
                pass
        return divergence

    def _observe(self, raw) -> str | None:
        from .model import UcsModel
        from .service import UcsService, mailbox_for

        if raw.http_status is None or raw.method != "POST":
            return None
        fault = _fault_action(raw.fault)
        request = raw.decoded_request
        if request is None and raw.request_body:
            request = codec.decode_request(raw.request_body, header(raw.request_headers, "SOAPAction"),
                                           header(raw.request_headers, "Content-Type"))
        if not isinstance(request, EwsRequest) or request.operation not in P.UCS_OPERATIONS:
            return None
        if fault in ACTIONS and ACTIONS[fault].kind.stands_in:
            return None  # Exchange never saw it
        mailbox = mailbox_for(request, request_user(raw.request_headers))
        response: EwsResponse | DecodeError | None = (
            raw.decoded_response if isinstance(raw.decoded_response, EwsResponse) else None)
        if response is None:
            response = codec.decode_response(raw.response_body or b"", request.operation,
                                             header(raw.response_headers, "Content-Type"))
        if not isinstance(response, EwsResponse) or (response.message is None and response.fault is None):
            self._models.pop(mailbox, None)  # lost track: wait for the next item list
            return None
        model = self._models.get(mailbox)
        payload = response.message.payload if response.message is not None else None
        if request.operation == "GetImItemList" and response.response_class == P.SUCCESS \
                and isinstance(payload, ImItemList):
            divergence = None
            if model is not None:
                self.compared += 1
                divergence = compare(response, UcsService(model).handle(request, user=mailbox))
            fresh = UcsModel()
            fresh.seed_mailbox(mailbox, payload)
            self._models[mailbox] = fresh
            return divergence
        if model is None:
            return None  # not seeded yet
        self.compared += 1
        before = model.mailbox(mailbox).copy()
        try:
            divergence = compare(response, UcsService(model).handle(request, user=mailbox))
        finally:
            model.put_mailbox(before)  # Exchange's outcome, not the model's, goes on
        if fault == "stale-changekey":
            divergence = None  # ucsproxy altered the change keys itself; they are not compared anyway
        self._adopt(model, mailbox, request, response)
        return divergence

    def _adopt(self, model, mailbox: str, request: EwsRequest, response: EwsResponse) -> None:
        """Apply Exchange's answer to the model, keeping Exchange's ids (as stateful replay does)."""
        from .model import UcsError
        from .replay import _apply_recorded
        from .service import UcsService

        if response.message is None or response.message.response_class != P.SUCCESS:
            return  # Exchange changed nothing
        service = UcsService(model)
        try:
            if request.operation in _ADOPTING:
                _apply_recorded(model, service, mailbox, request, response, first=False)
            else:
                answer = service.handle(request, user=mailbox)
                if not isinstance(answer, UcsResponse) or answer.response_class != P.SUCCESS:
                    raise UcsError(answer.response_code if isinstance(answer, UcsResponse) else None)
        except UcsError:
            # The model cannot take Exchange's change (it lacks the group): reseed at the next list.
            self._models.pop(mailbox, None)
        except Exception:  # never let the shadow break recording
            log.exception("ucsproxy: shadow model could not follow %s for %s", request.operation, mailbox)
            self._models.pop(mailbox, None)


def _fault_action(fault: Any) -> str | None:
    if not fault:
        return None
    if isinstance(fault, str):
        import json

        try:
            fault = json.loads(fault)
        except ValueError:
            return None
    return fault.get("action") if isinstance(fault, dict) else None

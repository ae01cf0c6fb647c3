"""The JSON text of log columns: the one encoder, and the ``result`` of item lists from the
JSON of their groups and personas (kept with live records, by identity: ucsproxy.memo).

Used by :mod:`ucsproxy.logrow` (every row) and :mod:`ucsproxy.logpieces` (item lists built
from the pieces seen before), so both give a list the very same text.
"""

from __future__ import annotations

import json
from typing import Any

from .memo import IdentityCache
from .records import EwsResponse, ImGroup, ImItemList, Persona, to_jsonable

# The JSON columns: keys sorted (an import of exported fixtures gives the same text back),
# non-ASCII kept as it is. to_jsonable already gives its keys in sorted order and the dicts
# built here have one key, so the encoder need not sort. One encoder for all rows (json.dumps
# would build one per call); records and headers hold no cycles, so it need not look for them.
_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)


JSON_ENCODER = _JSON


def _json(value: Any) -> str | None:
    return None if value is None else _JSON.encode(value)


# The JSON of personas and whole item lists, by record identity (see ucsproxy.memo):
# the mock hands out the same records while a mailbox is unchanged, so the ``result`` of
# its GetImItemList answers is built once per change, and an edited list rebuilds only
# the personas that changed.
_PERSONA_JSON = IdentityCache()
_ITEM_LIST_JSON = IdentityCache()


def persona_json(persona: Persona) -> str:
    """The JSON text of one persona (as it stands in a list's ``result``), cached by identity."""
    text = _PERSONA_JSON.get(persona)
    if text is None:
        text = _JSON.encode(to_jsonable(persona))
        _PERSONA_JSON.put(persona, text)
    return text


def group_json(group: ImGroup) -> str:
    """The JSON text of one group (as it stands in a list's ``result``)."""
    return _JSON.encode(to_jsonable(group))


def item_list_json(groups: list[str], personas: list[str]) -> str:
    """The ``result`` of an ImItemList from its groups' and personas' JSON texts:
    ``_json(to_jsonable(ImItemList(...)))``, its non-empty fields in sorted order."""
    # Two copies of a list's text (each field's join, then the whole), not five.
    out = ["{"]
    if groups:
        out += ('"groups": [', ", ".join(groups), "]")
    if personas:
        out += (', "personas": [' if groups else '"personas": [', ", ".join(personas), "]")
    out.append("}")
    return "".join(out)


def payload_json(payload: Any) -> str | None:
    """``_json(to_jsonable(payload))``, text for text; an ImItemList from its cached parts."""
    if type(payload) is not ImItemList:
        return _json(to_jsonable(payload))
    text = _ITEM_LIST_JSON.get(payload)
    if text is None:
        text = item_list_json([group_json(g) for g in payload.groups], [persona_json(p) for p in payload.personas])
        _ITEM_LIST_JSON.put(payload, text)
    return text


#: The columns of answers made with them (ucsproxy.answers: a mock's new group), by identity.
ANSWER_COLUMNS = IdentityCache()


def answer_columns(response: EwsResponse) -> tuple[str | None, str | None, str | None, str | None]:
    """A decoded answer's log columns: operation, response class, response code and the
    ``result`` JSON text (of a UCS message's payload or MessageXml, or of the fault)."""
    known = ANSWER_COLUMNS.get(response)
    if known is not None:
        return known
    result = None
    if response.fault is not None:
        result = _json(to_jsonable(response.fault))
    elif response.message is not None and response.message.payload is not None:
        result = payload_json(response.message.payload)
    elif response.message is not None and response.message.message_xml is not None:
        result = _json({"message_xml": to_jsonable(response.message.message_xml)})
    return response.operation, response.response_class, response.response_code, result

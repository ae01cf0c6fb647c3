"""Requests in, responses out: the fake Exchange's service layer.

Turns a decoded :class:`~ucsproxy.records.EwsRequest` into a model call and the
result (or the model's :class:`~ucsproxy.model.UcsError`) into the response
record Exchange would send. No XML here (the codec encodes), no state (the
model holds it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import answers, identity
from .memo import keep
from . import protocol as P
from .model import DEFAULT_MAILBOX, UcsError, UcsModel
from .records import (
    AddDistributionGroupToImList,
    AddImContactToGroup,
    AddImGroup,
    AddNewImContactToGroup,
    EwsRequest,
    GetImItemList,
    GetImItems,
    Payload,
    RemoveContactFromImList,
    RemoveDistributionGroupFromImList,
    RemoveImContactFromGroup,
    RemoveImGroup,
    ServerVersionInfo,
    SetImGroup,
    SetImListMigrationCompleted,
    SoapFault,
    UcsRequest,
    UcsResponse,
)

log = logging.getLogger(__name__)


def mailbox_for(request: EwsRequest, user: str | None) -> str:
    """Whose list a request works on: the impersonated mailbox, else ``user`` (what
    :func:`ucsproxy.identity.request_mailbox` found in the HTTP headers, or a recorded
    mailbox column), else the default mailbox. The rules are :mod:`ucsproxy.identity`'s."""
    found = identity.impersonated(request)
    if found:
        return found
    try:
        return _USERS[user]  # the same user with every request
    except KeyError:
        pass
    found = identity.clean_name(user) or DEFAULT_MAILBOX
    if user is None or len(user) <= 256:
        keep(_USERS, user, found, 1024)
    return found


_USERS: dict[str | None, str] = {}


_SUCCESS_EMPTY: dict[str, UcsResponse] = {}
_new = object.__new__


def _success(operation: str, payload: Payload | None) -> UcsResponse:
    """``UcsResponse(operation, P.SUCCESS, "NoError", payload=payload)``: without a payload the same
    record for each operation (records are immutable), with one its instance dict filled directly
    (in field order, as the codec makes records: the same object __init__ would make)."""
    if payload is None:
        found = _SUCCESS_EMPTY.get(operation)
        if found is None:
            found = UcsResponse(operation, P.SUCCESS, "NoError")
            if len(_SUCCESS_EMPTY) < 64:
                _SUCCESS_EMPTY[operation] = found
        return found
    made = _new(UcsResponse)
    d = made.__dict__
    d["operation"] = operation
    d["response_class"] = P.SUCCESS
    d["response_code"] = "NoError"
    d["message_text"] = d["descriptive_link_key"] = d["message_xml"] = None
    d["payload"] = payload
    return made


class UcsService:
    """The fake Exchange's EWS endpoint for UCS: one :meth:`handle` per request.

    Holds no state of its own; every mailbox lives in ``model``.
    """

    def __init__(self, model: UcsModel, server_version: ServerVersionInfo | None = None) -> None:
        self.model = model
        self.server_version = server_version or ServerVersionInfo()

    def mailbox_for(self, request: EwsRequest, user: str | None = None) -> str:
        return mailbox_for(request, user)

    def handle(self, request: EwsRequest, user: str | None = None) -> UcsResponse | SoapFault:
        op = request.operation
        if request.body is None:
            return answers.unsupported_operation(op)
        fault = answers.version_fault(request.headers.request_server_version)
        if fault is not None:
            return fault
        mailbox = self.mailbox_for(request, user)
        try:
            payload = self._dispatch(mailbox, request.body)
        except UcsError as e:
            return answers.ews_error(op, e.code, message_xml=answers.values_xml(e.values))
        except Exception:
            # A request built by hand (not by the codec) can hold values no rule expects;
            # the client gets what Exchange sends for its own bugs, the mock keeps serving.
            log.exception("UCS model failed on %s for %s", op, mailbox)
            return answers.ews_error(op, "ErrorInternalServerError")
        return _success(op, payload)

    def _dispatch(self, mailbox: str, body: UcsRequest) -> Payload | None:
        call = _CALLS.get(type(body))
        if call is None:  # a subclass of a request record (built by hand): its base's call
            call = next((_CALLS[c] for c in type(body).__mro__ if c in _CALLS), None)
            if call is None:
                raise UcsError("ErrorInvalidRequest", f"no rule for {type(body).__name__}")
        return call(self.model, mailbox, body)


# Per request record class, its model call (UcsService._dispatch).
def _add_im_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    return m.add_im_group(mb, b.display_name)


def _add_new_im_contact_to_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    return m.add_new_im_contact_to_group(mb, b.im_address, b.display_name, b.group_id)


def _add_im_contact_to_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.add_im_contact_to_group(mb, b.contact_id, b.group_id)
    return None


def _remove_im_contact_from_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.remove_im_contact_from_group(mb, b.contact_id, b.group_id)
    return None


def _remove_contact_from_im_list(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.remove_contact_from_im_list(mb, b.contact_id)
    return None


def _remove_im_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.remove_im_group(mb, b.group_id)
    return None


def _set_im_group(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.set_im_group(mb, b.group_id, b.new_display_name)
    return None


def _add_distribution_group_to_im_list(m: UcsModel, mb: str, b: Any) -> Payload | None:
    return m.add_distribution_group_to_im_list(mb, b.smtp_address, b.display_name)


def _remove_distribution_group_from_im_list(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.remove_distribution_group_from_im_list(mb, b.group_id)
    return None


def _set_im_list_migration_completed(m: UcsModel, mb: str, b: Any) -> Payload | None:
    m.set_im_list_migration_completed(mb, b.im_list_migration_completed)
    return None


def _get_im_item_list(m: UcsModel, mb: str, b: Any) -> Payload | None:
    return m.get_im_item_list(mb, b.extended_properties)


def _get_im_items(m: UcsModel, mb: str, b: Any) -> Payload | None:
    return m.get_im_items(mb, b.contact_ids, b.group_ids, b.extended_properties)


_CALLS: dict[type, Callable[[UcsModel, str, Any], Payload | None]] = {
    AddImGroup: _add_im_group,
    AddNewImContactToGroup: _add_new_im_contact_to_group,
    AddImContactToGroup: _add_im_contact_to_group,
    RemoveImContactFromGroup: _remove_im_contact_from_group,
    RemoveContactFromImList: _remove_contact_from_im_list,
    RemoveImGroup: _remove_im_group,
    SetImGroup: _set_im_group,
    AddDistributionGroupToImList: _add_distribution_group_to_im_list,
    RemoveDistributionGroupFromImList: _remove_distribution_group_from_im_list,
    SetImListMigrationCompleted: _set_im_list_migration_completed,
    GetImItemList: _get_im_item_list,
    GetImItems: _get_im_items,
}

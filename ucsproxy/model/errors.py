"""The model's failures: one exception per EWS ResponseCode a UCS operation can fail with.

The service turns each into Exchange's Error message (:func:`ucsproxy.answers.ews_error`),
so the wire carries the code, its MessageText and, where Exchange names something, MessageXml.
"""

from __future__ import annotations


class UcsError(Exception):
    """A UCS operation failed with an EWS ResponseCode (``code``).

    Raise a subclass (``InvalidImGroupId()``) or the base with any code
    (``UcsError("ErrorServerBusy")``); ``detail`` is for people reading logs,
    the wire carries only the code and its MessageText.
    """

    code = "ErrorInternalServerError"

    def __init__(self, code: str | None = None, detail: str | None = None,
                 values: tuple[tuple[str, str], ...] = ()) -> None:
        if code is not None:
            self.code = code
        #: ``(Name, value)`` pairs for the answer's MessageXml (``<t:Value Name=...>``).
        self.values = tuple(values)
        super().__init__(detail or self.code)


class InvalidImContactId(UcsError):
    code = "ErrorInvalidImContactId"


class InvalidImGroupId(UcsError):
    code = "ErrorInvalidImGroupId"


class ImContactLimitReached(UcsError):
    code = "ErrorImContactLimitReached"


class ImGroupLimitReached(UcsError):
    code = "ErrorImGroupLimitReached"


class ImGroupDisplayNameAlreadyExists(UcsError):
    code = "ErrorImGroupDisplayNameAlreadyExists"


class InvalidImDistributionGroupSmtpAddress(UcsError):
    code = "ErrorInvalidImDistributionGroupSmtpAddress"


class ItemNotFound(UcsError):
    """RemoveContactFromImList / RemoveDistributionGroupFromImList of an item no longer there (their pages)."""
    code = "ErrorItemNotFound"


class InvalidIdEmpty(UcsError):
    """An empty Id attribute (schema-valid, so an error rather than a fault)."""
    code = "ErrorInvalidIdEmpty"


class InvalidIdMalformed(UcsError):
    """An id that is no EWS id at all (the RemoveImGroup page)."""
    code = "ErrorInvalidIdMalformed"


class NonExistentMailbox(UcsError):
    """An id of an item in another mailbox (the AddNewImContactToGroup page); MessageXml names its MailboxGuid."""
    code = "ErrorNonExistentMailbox"


#: Every typed error above, by its ResponseCode.
_ERROR_CLASSES: dict[str, type[UcsError]] = {cls.code: cls for cls in UcsError.__subclasses__()}


def error_for(code: str, detail: str | None = None) -> UcsError:
    """The exception for a ResponseCode: its own subclass when there is one."""
    cls = _ERROR_CLASSES.get(code)
    return cls(detail=detail) if cls is not None else UcsError(code, detail)

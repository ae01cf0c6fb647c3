"""The response shapes of EWS operations outside UCS: what an error answer must look like.

ucsproxy answers every EWS operation outside [MS-OXWSCOS] with an error
(``ErrorInvalidOperation`` from the mock, the no-match error from replay, an injected
``ews-error``). EWS has three ways to carry that error, and an answer is only
schema-valid in its operation's own:

- ``messages``: the classic shape, ``<FindItemResponse><ResponseMessages>
  <FindItemResponseMessage ResponseClass="Error">`` (every Exchange 2007/2010 operation);
- ``single``: the response element *is* the message (``ResponseMessageType`` extended),
  ``<FindPeopleResponse ResponseClass="Error"><MessageText>..``; the newer operations
  (FindPeople, GetPersona, GetUserPhoto, the room, delegate, mail-tip and inbox-rule ones);
- ``wrapped``: one ``ResponseMessage`` element inside the response
  (GetUserOofSettings / SetUserOofSettings; GetUserAvailability one level deeper).

An operation not in :data:`SHAPES` gets the ``messages`` shape: it is the shape of
most EWS operations, and an operation a client invents gets a readable error either way.
The schema in ``ucsproxy/xsd/ews-messages.xsd`` declares each operation named here, so
every answer ucsproxy gives for them is checked against its type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResponseShape:
    #: The element names from the response element down to the element carrying
    #: ResponseClass / ResponseCode (the last one), all in the messages namespace.
    path: tuple[str, ...]
    #: Children the message type requires after MessageXml, with the value an error carries.
    required: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:
        if len(self.path) == 1:
            return "single"
        return "messages" if self.path[1] == "ResponseMessages" else "wrapped"


def _messages(op: str) -> ResponseShape:
    return ResponseShape((f"{op}Response", "ResponseMessages", f"{op}ResponseMessage"))


#: ResponseMessages-shaped operations Exchange 2013+ clients send (FindItem & co.).
MESSAGES_OPERATIONS: tuple[str, ...] = (
    "ArchiveItem", "ConvertId", "CopyFolder", "CopyItem", "CreateAttachment", "CreateFolder", "CreateFolderPath",
    "CreateItem", "CreateManagedFolder", "CreateUserConfiguration", "DeleteAttachment", "DeleteFolder",
    "DeleteItem", "DeleteUserConfiguration", "EmptyFolder", "ExpandDL", "ExportItems", "FindFolder", "FindItem",
    "GetAttachment", "GetClientAccessToken", "GetConversationItems", "GetEvents", "GetFolder", "GetItem",
    "GetServerTimeZones", "GetStreamingEvents", "GetUserConfiguration", "MarkAllItemsAsRead", "MarkAsJunk",
    "MoveFolder", "MoveItem", "ResolveNames", "SendItem", "Subscribe", "SyncFolderHierarchy", "SyncFolderItems",
    "Unsubscribe", "UpdateFolder", "UpdateItem", "UpdateUserConfiguration", "UploadItems",
)

#: Single-message operations: the response element carries ResponseClass itself.
#: GetPersona's response element is GetPersonaResponseMessage ([MS-OXWSPERS] 3.1.4.2.1.2).
SINGLE_OPERATIONS: dict[str, str] = {
    "AddDelegate": "AddDelegateResponse",
    "FindConversation": "FindConversationResponse",
    "FindPeople": "FindPeopleResponse",
    "GetDelegate": "GetDelegateResponse",
    "GetInboxRules": "GetInboxRulesResponse",
    "GetMailTips": "GetMailTipsResponse",
    "GetPersona": "GetPersonaResponseMessage",
    "GetRoomLists": "GetRoomListsResponse",
    "GetRooms": "GetRoomsResponse",
    "GetServiceConfiguration": "GetServiceConfigurationResponse",
    "GetUserPhoto": "GetUserPhotoResponse",
    "RemoveDelegate": "RemoveDelegateResponse",
    "SetUserPhoto": "SetUserPhotoResponse",
    "UpdateDelegate": "UpdateDelegateResponse",
    "UpdateInboxRules": "UpdateInboxRulesResponse",
}

SHAPES: dict[str, ResponseShape] = {
    **{op: _messages(op) for op in MESSAGES_OPERATIONS},
    **{op: ResponseShape((element,)) for op, element in SINGLE_OPERATIONS.items()},
    # [MS-OXWSCONT] 3.1.4.7.3.2: HasChanged is required (minOccurs 1).
    "GetUserPhoto": ResponseShape(("GetUserPhotoResponse",), required=(("HasChanged", "false"),)),
    # An empty list, valid whether the type makes the element optional or required.
    "FindConversation": ResponseShape(("FindConversationResponse",), required=(("Conversations", ""),)),
    "GetRoomLists": ResponseShape(("GetRoomListsResponse",), required=(("RoomLists", ""),)),
    "GetUserOofSettings": ResponseShape(("GetUserOofSettingsResponse", "ResponseMessage")),
    "SetUserOofSettings": ResponseShape(("SetUserOofSettingsResponse", "ResponseMessage")),
    "GetUserAvailability": ResponseShape(
        ("GetUserAvailabilityResponse", "FreeBusyResponseArray", "FreeBusyResponse", "ResponseMessage")),
}


def shape_of(operation: str) -> ResponseShape:
    """How ``operation``'s error answer is shaped; ``messages`` for an operation not in the table."""
    return SHAPES.get(operation) or _messages(operation)

"""Names and constants of EWS and the Unified Contact Store ([MS-OXWSCOS]).

Everything here is protocol vocabulary: namespaces, operation names, group
classes, schema versions and the ResponseCode values ucsproxy emits. No logic
beyond small lookups lives here, so every other module can import it freely.
"""

from __future__ import annotations

from .memo import keep

NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_MESSAGES = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_TYPES = "http://schemas.microsoft.com/exchange/services/2006/types"
NS_ERRORS = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XSD = "http://www.w3.org/2001/XMLSchema"

SOAP_ACTION_PREFIX = NS_MESSAGES + "/"

#: Where Exchange serves EWS; IIS compares paths case-insensitively.
EWS_PATH = "/EWS/Exchange.asmx"


def is_ews_endpoint(path: str) -> bool:
    """True for the EWS endpoint path (a query string and a final slash allowed), in any letter case."""
    try:
        return _EWS_ENDPOINTS[path]  # the lean front asks twice per request, for the same few paths
    except KeyError:
        pass
    found = path.split("?", 1)[0].lower().rstrip("/") == "/ews/exchange.asmx"
    if len(path) <= 256:  # a long target (up to 64 KB) is looked at each time, not kept
        keep(_EWS_ENDPOINTS, path, found, 1024)
    return found


_EWS_ENDPOINTS: dict[str, bool] = {}  # path -> is_ews_endpoint(path), for paths of at most 256 characters


def is_ews_path(path: str) -> bool:
    """A path under ``/EWS/`` (any letter case), where Exchange serves EWS."""
    return "/ews/" in path.lower()


def is_ews_request(method: str, path: str, body: bytes | None = None) -> bool:
    """An EWS request in observed traffic: a POST under ``/EWS/``, or, when ``body`` is given,
    a body that names EWS's messages namespace (a capture of a client whose path was rewritten).

    The endpoint ucsproxy serves is narrower: :func:`is_ews_endpoint`.
    """
    if body is None:  # the console and the log ask this of every exchange, for the same few paths
        key = (method, path)
        found = _EWS_REQUESTS.get(key)
        if found is None:
            found = method.upper() == "POST" and is_ews_path(path)
            if len(path) <= 1024:  # a long target is looked at each time, not kept
                keep(_EWS_REQUESTS, key, found, 1024)
        return found
    if method.upper() == "POST" and is_ews_path(path):
        return True
    return b"schemas.microsoft.com/exchange/services/2006/messages" in body[:4096]


_EWS_REQUESTS: dict[tuple[str, str], bool] = {}  # (method, path) -> is_ews_request(method, path)

#: The twelve operations of [MS-OXWSCOS], in the order of its section 3.1.4.
UCS_OPERATIONS: tuple[str, ...] = (
    "AddDistributionGroupToImList",
    "AddImContactToGroup",
    "AddImGroup",
    "AddNewImContactToGroup",
    "GetImItemList",
    "GetImItems",
    "RemoveContactFromImList",
    "RemoveDistributionGroupFromImList",
    "RemoveImContactFromGroup",
    "RemoveImGroup",
    "SetImGroup",
    "SetImListMigrationCompleted",
)

# Group classes (GroupType) as Exchange stores them.
GROUP_OTHER_CONTACTS = "IPM.DistList.MOC.OtherContacts"
GROUP_TAGGED = "IPM.DistList.MOC.Tagged"
GROUP_FAVORITES = "IPM.DistList.MOC.Favorites"
GROUP_USER = "IPM.DistList.MOC.UserGroup"
GROUP_DISTRIBUTION = "IPM.DistList.MOC.DG"

# ResponseClass values. "Fault" is ucsproxy's own label for a SOAP fault answer
# (it has no ResponseClass on the wire) so the log can be filtered uniformly.
SUCCESS = "Success"
WARNING = "Warning"
ERROR = "Error"
FAULT = "Fault"

#: RequestServerVersion values in release order. The UCS operations exist from
#: Exchange 2013 on ("Exchange2012" is the name the 2013 preview used and the
#: spec's own section 4 examples send).
SERVER_VERSIONS: tuple[str, ...] = (
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2012",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2016",
    "Exchange2019",
    "V2015_10_05",
    "V2016_01_06",
    "V2016_04_13",
    "V2016_07_13",
    "V2016_10_10",
    "V2017_01_07",
    "V2017_04_14",
    "V2017_07_11",
    "V2017_10_09",
    "V2018_01_08",
)
UCS_MIN_VERSION = "Exchange2012"


def supports_ucs(version: str | None) -> bool:
    """True when a RequestServerVersion value is new enough for the UCS operations.

    Unknown values that look like later dated versions (``V2019_...``) count as new.
    """
    if not version:
        return False
    if version in SERVER_VERSIONS:
        return SERVER_VERSIONS.index(version) >= SERVER_VERSIONS.index(UCS_MIN_VERSION)
    return version.startswith("V20")


#: Every EWS ResponseCode: the names of the closed xs:enumeration ``m:ResponseCodeType``
#: in Exchange's messages.xsd (the ResponseCode of every response message and of a
#: fault's detail), as of Exchange 2013+, the first release with the UCS operations.
#: Listed from the schema's enumeration, sorted case-insensitively. A code outside
#: it fails schema validation in any client that checks, so ucsproxy never sends one.
RESPONSE_CODES: frozenset[str] = frozenset("""
    ErrorAccessDenied ErrorAccessModeSpecified ErrorAccountDisabled ErrorAddDelegatesFailed
    ErrorAddressSpaceNotFound ErrorADOperation ErrorADSessionFilter ErrorADUnavailable
    ErrorAffectedTaskOccurrencesRequired ErrorApplyConversationActionFailed ErrorArchiveFolderPathCreation
    ErrorArchiveMailboxNotEnabled ErrorArchiveMailboxSearchFailed ErrorArchiveMailboxServiceDiscoveryFailed
    ErrorAttachmentNestLevelLimitExceeded ErrorAttachmentSizeLimitExceeded ErrorAutoDiscoverFailed
    ErrorAvailabilityConfigNotFound ErrorBatchProcessingStopped ErrorCalendarCannotMoveOrCopyOccurrence
    ErrorCalendarCannotUpdateDeletedItem ErrorCalendarCannotUseIdForOccurrenceId
    ErrorCalendarCannotUseIdForRecurringMasterId ErrorCalendarDurationIsTooLong
    ErrorCalendarEndDateIsEarlierThanStartDate ErrorCalendarFolderIsInvalidForCalendarView
    ErrorCalendarInvalidAttributeValue ErrorCalendarInvalidDayForTimeChangePattern
    ErrorCalendarInvalidDayForWeeklyRecurrence ErrorCalendarInvalidPropertyState
    ErrorCalendarInvalidPropertyValue ErrorCalendarInvalidRecurrence ErrorCalendarInvalidTimeZone
    ErrorCalendarIsCancelledForAccept ErrorCalendarIsCancelledForDecline ErrorCalendarIsCancelledForRemove
    ErrorCalendarIsCancelledForTentative ErrorCalendarIsDelegatedForAccept
    ErrorCalendarIsDelegatedForDecline ErrorCalendarIsDelegatedForRemove
    ErrorCalendarIsDelegatedForTentative ErrorCalendarIsNotOrganizer ErrorCalendarIsOrganizerForAccept
    ErrorCalendarIsOrganizerForDecline ErrorCalendarIsOrganizerForRemove
    ErrorCalendarIsOrganizerForTentative ErrorCalendarMeetingRequestIsOutOfDate
    ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange ErrorCalendarOccurrenceIsDeletedFromRecurrence
    ErrorCalendarOutOfRange ErrorCalendarSeekToConditionNotSupported ErrorCalendarViewRangeTooBig
    ErrorCallerIsInvalidADAccount ErrorCannotArchiveCalendarContactTaskFolderException
    ErrorCannotArchiveItemsInArchiveMailbox ErrorCannotArchiveItemsInPublicFolders
    ErrorCannotCreateCalendarItemInNonCalendarFolder ErrorCannotCreateContactInNonContactFolder
    ErrorCannotCreatePostItemInNonMailFolder ErrorCannotCreateTaskInNonTaskFolder ErrorCannotDeleteObject
    ErrorCannotDeleteTaskOccurrence ErrorCannotDisableMandatoryExtension ErrorCannotEmptyFolder
    ErrorCannotGetExternalEcpUrl ErrorCannotGetSourceFolderPath ErrorCannotOpenFileAttachment
    ErrorCannotSetCalendarPermissionOnNonCalendarFolder ErrorCannotSetNonCalendarPermissionOnCalendarFolder
    ErrorCannotSetPermissionUnknownEntries ErrorCannotSpecifySearchFolderAsSourceFolder
    ErrorCannotUseFolderIdForItemId ErrorCannotUseItemIdForFolderId ErrorChangeKeyRequired
    ErrorChangeKeyRequiredForWriteOperations ErrorClientDisconnected ErrorClientIntentInvalidStateDefinition
    ErrorClientIntentNotFound ErrorConnectionFailed ErrorContainsFilterWrongType
    ErrorContentConversionFailed ErrorContentIndexingNotEnabled ErrorCorruptData ErrorCreateItemAccessDenied
    ErrorCreateManagedFolderPartialCompletion ErrorCreateSubfolderAccessDenied ErrorCrossMailboxMoveCopy
    ErrorCrossSiteRequest ErrorDataSizeLimitExceeded ErrorDataSourceOperation ErrorDelegateAlreadyExists
    ErrorDelegateCannotAddOwner ErrorDelegateMissingConfiguration ErrorDelegateNoUser
    ErrorDelegateValidationFailed ErrorDeleteDistinguishedFolder ErrorDeleteItemsFailed
    ErrorDeleteUnifiedMessagingPromptFailed ErrorDiscoverySearchesDisabled
    ErrorDistinguishedUserNotSupported ErrorDistributionListMemberNotExist ErrorDuplicateInputFolderNames
    ErrorDuplicateLegacyDistinguishedName ErrorDuplicateSOAPHeader ErrorDuplicateUserIdsSpecified
    ErrorEmailAddressMismatch ErrorEventNotFound ErrorExceededConnectionCount ErrorExceededFindCountLimit
    ErrorExceededSubscriptionCount ErrorExpiredSubscription ErrorExtensionNotFound ErrorFolderCorrupt
    ErrorFolderExists ErrorFolderNotFound ErrorFolderPropertRequestFailed ErrorFolderSave
    ErrorFolderSaveFailed ErrorFolderSavePropertyError ErrorFreeBusyDLLimitReached
    ErrorFreeBusyGenerationFailed ErrorGetServerSecurityDescriptorFailed ErrorImContactLimitReached
    ErrorImGroupDisplayNameAlreadyExists ErrorImGroupLimitReached ErrorImpersonateUserDenied
    ErrorImpersonationDenied ErrorImpersonationFailed ErrorInboxRulesValidationError
    ErrorIncorrectSchemaVersion ErrorIncorrectUpdatePropertyCount ErrorIndividualMailboxLimitReached
    ErrorInsufficientResources ErrorInternalServerError ErrorInternalServerTransientError
    ErrorInvalidAccessLevel ErrorInvalidArgument ErrorInvalidAttachmentId ErrorInvalidAttachmentSubfilter
    ErrorInvalidAttachmentSubfilterTextFilter ErrorInvalidAuthorizationContext ErrorInvalidChangeKey
    ErrorInvalidClientAccessTokenRequest ErrorInvalidClientSecurityContext ErrorInvalidCompleteDate
    ErrorInvalidContactEmailAddress ErrorInvalidContactEmailIndex ErrorInvalidCrossForestCredentials
    ErrorInvalidDelegatePermission ErrorInvalidDelegateUserId ErrorInvalidExchangeImpersonationHeaderData
    ErrorInvalidExcludesRestriction ErrorInvalidExpressionTypeForSubFilter ErrorInvalidExtendedProperty
    ErrorInvalidExtendedPropertyValue ErrorInvalidExternalSharingInitiator
    ErrorInvalidExternalSharingSubscriber ErrorInvalidFederatedOrganizationId ErrorInvalidFolderId
    ErrorInvalidFolderTypeForOperation ErrorInvalidFractionalPagingParameters ErrorInvalidFreeBusyViewType
    ErrorInvalidGetSharingFolderRequest ErrorInvalidId ErrorInvalidIdEmpty ErrorInvalidIdMalformed
    ErrorInvalidIdMalformedEwsLegacyIdFormat ErrorInvalidIdMonikerTooLong
    ErrorInvalidIdNotAnItemAttachmentId ErrorInvalidIdReturnedByResolveNames
    ErrorInvalidIdStoreObjectIdTooLong ErrorInvalidIdTooManyAttachmentLevels ErrorInvalidIdXml
    ErrorInvalidImContactId ErrorInvalidImDistributionGroupSmtpAddress ErrorInvalidImGroupId
    ErrorInvalidIndexedPagingParameters ErrorInvalidInternetHeaderChildNodes
    ErrorInvalidItemForOperationAcceptItem ErrorInvalidItemForOperationArchiveItem
    ErrorInvalidItemForOperationCancelItem ErrorInvalidItemForOperationCreateItem
    ErrorInvalidItemForOperationCreateItemAttachment ErrorInvalidItemForOperationDeclineItem
    ErrorInvalidItemForOperationExpandDL ErrorInvalidItemForOperationRemoveItem
    ErrorInvalidItemForOperationSendItem ErrorInvalidItemForOperationTentative ErrorInvalidLogonType
    ErrorInvalidMailbox ErrorInvalidManagedFolderProperty ErrorInvalidManagedFolderQuota
    ErrorInvalidManagedFolderSize ErrorInvalidManagementRoleHeader ErrorInvalidMergedFreeBusyInterval
    ErrorInvalidNameForNameResolution ErrorInvalidNetworkServiceContext ErrorInvalidOofParameter
    ErrorInvalidOperation ErrorInvalidOrganizationRelationshipForFreeBusy ErrorInvalidPagingMaxRows
    ErrorInvalidParentFolder ErrorInvalidPercentCompleteValue ErrorInvalidPermissionSettings
    ErrorInvalidPhoneCallId ErrorInvalidPhoneNumber ErrorInvalidPhotoSize ErrorInvalidPropertyAppend
    ErrorInvalidPropertyDelete ErrorInvalidPropertyForExists ErrorInvalidPropertyForOperation
    ErrorInvalidPropertyRequest ErrorInvalidPropertySet ErrorInvalidPropertyUpdateSentMessage
    ErrorInvalidProxySecurityContext ErrorInvalidPullSubscriptionId ErrorInvalidPushSubscriptionUrl
    ErrorInvalidRecipients ErrorInvalidRecipientSubfilter ErrorInvalidRecipientSubfilterComparison
    ErrorInvalidRecipientSubfilterOrder ErrorInvalidRecipientSubfilterTextFilter ErrorInvalidReferenceItem
    ErrorInvalidRequest ErrorInvalidRestriction ErrorInvalidRetentionTagIdGuid
    ErrorInvalidRetentionTagInheritance ErrorInvalidRetentionTagInvisible ErrorInvalidRetentionTagNone
    ErrorInvalidRetentionTagTypeMismatch ErrorInvalidRoutingType ErrorInvalidScheduledOofDuration
    ErrorInvalidSchemaVersionForMailboxVersion ErrorInvalidSecurityDescriptor
    ErrorInvalidSendItemSaveSettings ErrorInvalidSerializedAccessToken ErrorInvalidServerVersion
    ErrorInvalidSharingData ErrorInvalidSharingMessage ErrorInvalidSid ErrorInvalidSIPUri
    ErrorInvalidSmtpAddress ErrorInvalidSubfilterType ErrorInvalidSubfilterTypeNotAttendeeType
    ErrorInvalidSubfilterTypeNotRecipientType ErrorInvalidSubscription ErrorInvalidSubscriptionRequest
    ErrorInvalidSyncStateData ErrorInvalidTimeInterval ErrorInvalidUserInfo ErrorInvalidUserOofSettings
    ErrorInvalidUserPrincipalName ErrorInvalidUserSid ErrorInvalidUserSidMissingUPN
    ErrorInvalidValueForProperty ErrorInvalidWatermark ErrorIPGatewayNotFound ErrorIrresolvableConflict
    ErrorItemCorrupt ErrorItemNotFound ErrorItemPropertyRequestFailed ErrorItemSave
    ErrorItemSavePropertyError ErrorLegacyMailboxFreeBusyViewTypeNotMerged ErrorLocalServerObjectNotFound
    ErrorLocationServicesDisabled ErrorLocationServicesInvalidRequest ErrorLocationServicesRequestFailed
    ErrorLocationServicesRequestTimedOut ErrorLogonAsNetworkServiceFailed ErrorMailboxConfiguration
    ErrorMailboxDataArrayEmpty ErrorMailboxDataArrayTooBig ErrorMailboxFailover ErrorMailboxHoldNotFound
    ErrorMailboxLogonFailed ErrorMailboxMoveInProgress ErrorMailboxScopeNotAllowedWithoutQueryString
    ErrorMailboxStoreUnavailable ErrorMailRecipientNotFound ErrorMailTipsDisabled
    ErrorManagedFolderAlreadyExists ErrorManagedFolderNotFound ErrorManagedFoldersRootFailure
    ErrorMeetingSuggestionGenerationFailed ErrorMessageDispositionRequired ErrorMessageSizeExceeded
    ErrorMessageTrackingNoSuchDomain ErrorMessageTrackingPermanentError ErrorMessageTrackingTransientError
    ErrorMimeContentConversionFailed ErrorMimeContentInvalid ErrorMimeContentInvalidBase64String
    ErrorMissedNotificationEvents ErrorMissingArgument ErrorMissingEmailAddress
    ErrorMissingEmailAddressForManagedFolder ErrorMissingInformationEmailAddress
    ErrorMissingInformationReferenceItemId ErrorMissingInformationSharingFolderId
    ErrorMissingItemForCreateItemAttachment ErrorMissingManagedFolderId ErrorMissingRecipients
    ErrorMissingUserIdInformation ErrorMoreThanOneAccessModeSpecified ErrorMoveCopyFailed
    ErrorMoveDistinguishedFolder ErrorMultiLegacyMailboxAccess ErrorNameResolutionMultipleResults
    ErrorNameResolutionNoMailbox ErrorNameResolutionNoResults ErrorNewEventStreamConnectionOpened
    ErrorNoApplicableProxyCASServersAvailable ErrorNoCalendar ErrorNoDestinationCASDueToKerberosRequirements
    ErrorNoDestinationCASDueToSSLRequirements ErrorNoDestinationCASDueToVersionMismatch
    ErrorNoFolderClassOverride ErrorNoFreeBusyAccess ErrorNonExistentMailbox ErrorNonPrimarySmtpAddress
    ErrorNoPropertyTagForCustomProperties ErrorNoPublicFolderReplicaAvailable
    ErrorNoPublicFolderServerAvailable ErrorNoRespondingCASInDestinationSite ErrorNoSpeechDetected
    ErrorNotAllowedExternalSharingByPolicy ErrorNotDelegate ErrorNotEnoughMemory
    ErrorNotSupportedSharingMessage ErrorObjectTypeChanged ErrorOccurrenceCrossingBoundary
    ErrorOccurrenceTimeSpanTooBig ErrorOperationNotAllowedWithPublicFolderRoot ErrorOrganizationNotFederated
    ErrorOutlookRuleBlobExists ErrorParentFolderIdRequired ErrorParentFolderNotFound
    ErrorPasswordChangeRequired ErrorPasswordExpired ErrorPermissionNotAllowedByPolicy
    ErrorPhoneNumberNotDialable ErrorPromptPublishingOperationFailed ErrorPropertyUpdate
    ErrorPropertyValidationFailure ErrorProxiedSubscriptionCallFailure ErrorProxyCallFailed
    ErrorProxyGroupSidLimitExceeded ErrorProxyRequestNotAllowed ErrorProxyRequestProcessingFailed
    ErrorProxyServiceDiscoveryFailed ErrorProxyTokenExpired ErrorPublicFolderMailboxDiscoveryFailed
    ErrorPublicFolderOperationFailed ErrorPublicFolderRequestProcessingFailed
    ErrorPublicFolderServerNotFound ErrorPublicFolderSyncException ErrorQueryFilterTooLong
    ErrorQuotaExceeded ErrorReadEventsFailed ErrorReadReceiptNotPending ErrorRecipientNotFound
    ErrorRecognizerNotInstalled ErrorRecurrenceEndDateTooBig ErrorRecurrenceHasNoOccurrence
    ErrorRemoveDelegatesFailed ErrorRequestAborted ErrorRequestStreamTooBig ErrorRequiredPropertyMissing
    ErrorResolveNamesInvalidFolderType ErrorResolveNamesOnlyOneContactsFolderAllowed
    ErrorResponseSchemaValidation ErrorRestrictionTooComplex ErrorRestrictionTooLong ErrorResultSetTooBig
    ErrorRulesOverQuota ErrorSavedItemFolderNotFound ErrorSchemaValidation ErrorSearchFolderNotInitialized
    ErrorSearchQueryHasTooManyKeywords ErrorSearchTooManyMailboxes ErrorSendAsDenied
    ErrorSendMeetingCancellationsRequired ErrorSendMeetingInvitationsOrCancellationsRequired
    ErrorSendMeetingInvitationsRequired ErrorSentMeetingRequestUpdate ErrorSentTaskRequestUpdate
    ErrorServerBusy ErrorServiceDiscoveryFailed ErrorSharingNoExternalEwsAvailable
    ErrorSharingSynchronizationFailed ErrorSpeechGrammarError ErrorStaleObject ErrorSubmissionQuotaExceeded
    ErrorSubscriptionAccessDenied ErrorSubscriptionDelegateAccessNotSupported ErrorSubscriptionNotFound
    ErrorSubscriptionUnsubscribed ErrorSyncFolderNotFound ErrorTeamMailboxActiveToPendingDelete
    ErrorTeamMailboxErrorUnknown ErrorTeamMailboxFailedSendingNotifications
    ErrorTeamMailboxNotAuthorizedOwner ErrorTeamMailboxNotFound ErrorTeamMailboxNotLinkedToSharePoint
    ErrorTeamMailboxUrlValidationFailed ErrorTimeIntervalTooBig ErrorTimeoutExpired ErrorTimeZone
    ErrorToFolderNotFound ErrorTokenSerializationDenied ErrorTooManyObjectsOpened ErrorUMServerUnavailable
    ErrorUnableToGetUserOofSettings ErrorUnableToRemoveImContactFromGroup
    ErrorUnifiedMessagingDialPlanNotFound ErrorUnifiedMessagingPromptNotFound
    ErrorUnifiedMessagingReportDataNotFound ErrorUnifiedMessagingRequestFailed
    ErrorUnifiedMessagingServerNotFound ErrorUnsupportedCulture ErrorUnsupportedMapiPropertyType
    ErrorUnsupportedMimeConversion ErrorUnsupportedPathForQuery ErrorUnsupportedPathForSortGroup
    ErrorUnsupportedPropertyDefinition ErrorUnsupportedQueryFilter ErrorUnsupportedRecurrence
    ErrorUnsupportedSubFilter ErrorUnsupportedTypeForConversion ErrorUpdateDelegatesFailed
    ErrorUpdatePropertyMismatch ErrorUserNotAllowedByPolicy ErrorUserNotUnifiedMessagingEnabled
    ErrorUserWithoutFederatedProxyAddress ErrorValueOutOfRange ErrorVirusDetected ErrorVirusMessageDeleted
    ErrorVoiceMailNotImplemented ErrorWebRequestInInvalidState ErrorWin32InteropError
    ErrorWorkingHoursSaveFailed ErrorWorkingHoursXmlMalformed ErrorWrongServerVersion
    ErrorWrongServerVersionDelegate NoError
""".split())

# ResponseCode values ucsproxy produces itself, with the MessageText Exchange
# sends for them. Every other code of RESPONSE_CODES (fault injection can send
# any of them) falls back to a generic text. Texts an operation page shows are
# copied from it, its odd capitalisation included (tests/test_pages.py).
MESSAGE_TEXTS: dict[str, str] = {
    "NoError": "",
    # AddImContactToGroup and RemoveImContactFromGroup pages
    "ErrorInvalidImContactId": "The specified Im Contact Id is invalid.",
    # RemoveImGroup page
    "ErrorInvalidImGroupId": "The specified Im Group Id is invalid.",
    "ErrorInvalidIdMalformed": "Id is malformed.",
    "ErrorInvalidIdEmpty": "Id must be non-empty.",
    "ErrorImContactLimitReached": "The maximum number of IM contacts has been reached.",
    "ErrorImGroupLimitReached": "The maximum number of IM groups has been reached.",
    # SetImGroup page
    "ErrorImGroupDisplayNameAlreadyExists": "An IM group with the specified display name already exists.",
    # AddDistributionGroupToImList page
    "ErrorInvalidImDistributionGroupSmtpAddress": "The specified IM distribution group SMTP address is invalid.",
    # RemoveContactFromImList and RemoveDistributionGroupFromImList pages
    "ErrorItemNotFound": "The specified object was not found in the store.",
    # AddNewImContactToGroup page
    "ErrorNonExistentMailbox": "No mailbox with such guid.",
    "ErrorInvalidOperation": "The operation is not valid.",
    "ErrorInvalidRequest": "The request is invalid.",
    "ErrorInvalidServerVersion": "The specified server version is invalid.",
    "ErrorIncorrectSchemaVersion": (
        "The request is valid but does not specify the correct server version in the "
        "RequestServerVersion SOAP header.  Ensure that the RequestServerVersion SOAP "
        "header is set with the correct RequestServerVersionValue."
    ),
    "ErrorSchemaValidation": "The request failed schema validation.",
    "ErrorServerBusy": "The server cannot service this request right now. Try again later.",
    "ErrorInternalServerError": "An internal server error occurred. The operation failed.",
    "ErrorInternalServerTransientError": "An internal server error occurred. Try again later.",
    "ErrorMailboxStoreUnavailable": "The mailbox database is temporarily unavailable.",
    "ErrorAccessDenied": "Access is denied. Check credentials and try again.",
    "ErrorStaleObject": "The change key passed in the request does not match the current change key for the item.",
}


def message_text(code: str) -> str:
    """The MessageText Exchange sends with a ResponseCode (a generic sentence for unknown codes)."""
    return MESSAGE_TEXTS.get(code) or f"The request failed with {code}."

"""Errors that speak XMPP.

`StreamError` (RFC 6120 §4.9) closes the whole stream; `StanzaError` (RFC 6120 §8.3) bounces
one stanza.  Our own bugs stay ordinary exceptions.  Conditions are enums whose value is the
element name; the namespace is fixed per enum.
"""

from __future__ import annotations

import enum
from xml.sax.saxutils import escape

from shared.xmpp import ns


class StreamErrorCondition(enum.Enum):
    """RFC 6120 §4.9.3 defined stream error conditions."""

    BAD_FORMAT = "bad-format"
    BAD_NAMESPACE_PREFIX = "bad-namespace-prefix"
    CONFLICT = "conflict"
    CONNECTION_TIMEOUT = "connection-timeout"
    HOST_GONE = "host-gone"
    HOST_UNKNOWN = "host-unknown"
    IMPROPER_ADDRESSING = "improper-addressing"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    INVALID_FROM = "invalid-from"
    INVALID_NAMESPACE = "invalid-namespace"
    INVALID_XML = "invalid-xml"
    NOT_AUTHORIZED = "not-authorized"
    NOT_WELL_FORMED = "not-well-formed"
    POLICY_VIOLATION = "policy-violation"
    REMOTE_CONNECTION_FAILED = "remote-connection-failed"
    RESET = "reset"
    RESOURCE_CONSTRAINT = "resource-constraint"
    RESTRICTED_XML = "restricted-xml"
    SEE_OTHER_HOST = "see-other-host"
    SYSTEM_SHUTDOWN = "system-shutdown"
    UNDEFINED_CONDITION = "undefined-condition"
    UNSUPPORTED_ENCODING = "unsupported-encoding"
    UNSUPPORTED_FEATURE = "unsupported-feature"
    UNSUPPORTED_STANZA_TYPE = "unsupported-stanza-type"
    UNSUPPORTED_VERSION = "unsupported-version"


class StanzaErrorCondition(enum.Enum):
    """RFC 6120 §8.3.3 defined stanza error conditions."""

    BAD_REQUEST = "bad-request"
    CONFLICT = "conflict"
    FEATURE_NOT_IMPLEMENTED = "feature-not-implemented"
    FORBIDDEN = "forbidden"
    GONE = "gone"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    ITEM_NOT_FOUND = "item-not-found"
    JID_MALFORMED = "jid-malformed"
    NOT_ACCEPTABLE = "not-acceptable"
    NOT_ALLOWED = "not-allowed"
    NOT_AUTHORIZED = "not-authorized"
    POLICY_VIOLATION = "policy-violation"
    RECIPIENT_UNAVAILABLE = "recipient-unavailable"
    REDIRECT = "redirect"
    REGISTRATION_REQUIRED = "registration-required"
    REMOTE_SERVER_NOT_FOUND = "remote-server-not-found"
    REMOTE_SERVER_TIMEOUT = "remote-server-timeout"
    RESOURCE_CONSTRAINT = "resource-constraint"
    SERVICE_UNAVAILABLE = "service-unavailable"
    SUBSCRIPTION_REQUIRED = "subscription-required"
    UNDEFINED_CONDITION = "undefined-condition"
    UNEXPECTED_REQUEST = "unexpected-request"


class StanzaErrorType(enum.Enum):
    """RFC 6120 §8.3.2 error types."""

    AUTH = "auth"
    CANCEL = "cancel"
    CONTINUE = "continue"
    MODIFY = "modify"
    WAIT = "wait"


# RFC 6120 §8.3.3: the usual type for each condition, used when a caller gives none.
DEFAULT_STANZA_ERROR_TYPE: dict[StanzaErrorCondition, StanzaErrorType] = {
    StanzaErrorCondition.BAD_REQUEST: StanzaErrorType.MODIFY,
    StanzaErrorCondition.CONFLICT: StanzaErrorType.CANCEL,
    StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED: StanzaErrorType.CANCEL,
    StanzaErrorCondition.FORBIDDEN: StanzaErrorType.AUTH,
    StanzaErrorCondition.GONE: StanzaErrorType.CANCEL,
    StanzaErrorCondition.INTERNAL_SERVER_ERROR: StanzaErrorType.WAIT,
    StanzaErrorCondition.ITEM_NOT_FOUND: StanzaErrorType.CANCEL,
    StanzaErrorCondition.JID_MALFORMED: StanzaErrorType.MODIFY,
    StanzaErrorCondition.NOT_ACCEPTABLE: StanzaErrorType.MODIFY,
    StanzaErrorCondition.NOT_ALLOWED: StanzaErrorType.CANCEL,
    StanzaErrorCondition.NOT_AUTHORIZED: StanzaErrorType.AUTH,
    StanzaErrorCondition.POLICY_VIOLATION: StanzaErrorType.MODIFY,
    StanzaErrorCondition.RECIPIENT_UNAVAILABLE: StanzaErrorType.WAIT,
    StanzaErrorCondition.REDIRECT: StanzaErrorType.MODIFY,
    StanzaErrorCondition.REGISTRATION_REQUIRED: StanzaErrorType.AUTH,
    StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND: StanzaErrorType.CANCEL,
    StanzaErrorCondition.REMOTE_SERVER_TIMEOUT: StanzaErrorType.WAIT,
    StanzaErrorCondition.RESOURCE_CONSTRAINT: StanzaErrorType.WAIT,
    StanzaErrorCondition.SERVICE_UNAVAILABLE: StanzaErrorType.CANCEL,
    StanzaErrorCondition.SUBSCRIPTION_REQUIRED: StanzaErrorType.AUTH,
    StanzaErrorCondition.UNDEFINED_CONDITION: StanzaErrorType.CANCEL,
    StanzaErrorCondition.UNEXPECTED_REQUEST: StanzaErrorType.WAIT,
}


class XMPPError(Exception):
    """Base of the errors a peer causes."""


class StreamError(XMPPError):
    """The peer broke the stream; the stream is closed with <stream:error/> (RFC 6120 §4.9)."""

    def __init__(
        self,
        condition: StreamErrorCondition,
        text: str | None = None,
        content: str = "",
        extra: str = "",
    ) -> None:
        super().__init__(f"{condition.value}: {text}" if text else condition.value)
        self.condition = condition
        self.text = text
        self.content = content  # character data of the condition (§4.9.3.19 see-other-host)
        self.extra = extra  # an application-specific condition, serialised (§4.9.4)

    def to_xml(self) -> bytes:
        """The <stream:error/> element, written with the `stream` prefix of the stream header."""
        text = (
            f'<text xmlns="{ns.STREAMS_ERRORS}">{escape(self.text)}</text>' if self.text else ""
        )
        name = self.condition.value
        element = (
            f'<{name} xmlns="{ns.STREAMS_ERRORS}">{escape(self.content)}</{name}>'
            if self.content
            else f'<{name} xmlns="{ns.STREAMS_ERRORS}"/>'
        )
        return f"<stream:error>{element}{text}{self.extra}</stream:error>".encode()


class StanzaError(XMPPError):
    """One stanza is bounced with type='error' (RFC 6120 §8.3)."""

    def __init__(
        self,
        condition: StanzaErrorCondition,
        text: str | None = None,
        type_: StanzaErrorType | None = None,
        extra: str = "",
    ) -> None:
        super().__init__(f"{condition.value}: {text}" if text else condition.value)
        self.condition = condition
        self.text = text
        self.type = type_ or DEFAULT_STANZA_ERROR_TYPE[condition]
        self.extra = extra  # an application-specific condition element (RFC 6120 §8.3.2)

    def to_xml(self) -> str:
        """The <error/> child element (RFC 6120 §8.3.2)."""
        text = (
            f'<text xmlns="{ns.STANZAS_ERRORS}">{escape(self.text)}</text>' if self.text else ""
        )
        return (
            f'<error type="{self.type.value}"><{self.condition.value} '
            f'xmlns="{ns.STANZAS_ERRORS}"/>{text}{self.extra}</error>'
        )

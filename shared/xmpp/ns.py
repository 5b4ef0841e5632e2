"""XML namespaces used on the wire (RFC 6120, RFC 6121 and the XEPs we implement)."""

from __future__ import annotations

from typing import Final

STREAM: Final = "http://etherx.jabber.org/streams"
CLIENT: Final = "jabber:client"
SERVER: Final = "jabber:server"
STREAMS_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS: Final = "urn:ietf:params:xml:ns:xmpp-tls"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION: Final = "urn:ietf:params:xml:ns:xmpp-session"
XML: Final = "http://www.w3.org/XML/1998/namespace"
DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS: Final = "http://jabber.org/protocol/disco#items"
PING: Final = "urn:xmpp:ping"
VERSION: Final = "jabber:iq:version"
REGISTER: Final = "jabber:iq:register"
REGISTER_FEATURE: Final = "http://jabber.org/features/iq-register"
DELAY: Final = "urn:xmpp:delay"
ROSTER: Final = "jabber:iq:roster"
ROSTER_VERSIONING: Final = "urn:xmpp:features:rosterver"
PRE_APPROVAL: Final = "urn:xmpp:features:pre-approval"
VCARD: Final = "vcard-temp"
PRIVATE: Final = "jabber:iq:private"
BLOCKING: Final = "urn:xmpp:blocking"
BLOCKING_ERRORS: Final = "urn:xmpp:blocking:errors"
OFFLINE: Final = "msgoffline"
DIALBACK: Final = "jabber:server:dialback"
DIALBACK_FEATURE: Final = "urn:xmpp:features:dialback"
SM: Final = "urn:xmpp:sm:3"  # XEP-0198 Stream Management
CARBONS: Final = "urn:xmpp:carbons:2"  # XEP-0280 Message Carbons
FORWARD: Final = "urn:xmpp:forward:0"  # XEP-0297 Stanza Forwarding
SID: Final = "urn:xmpp:sid:0"  # XEP-0359 Unique and Stable Stanza IDs
MAM: Final = "urn:xmpp:mam:2"  # XEP-0313 Message Archive Management
MAM_EXTENDED: Final = "urn:xmpp:mam:2#extended"
RSM: Final = "http://jabber.org/protocol/rsm"  # XEP-0059 Result Set Management
DATA: Final = "jabber:x:data"  # XEP-0004 Data Forms
HINTS: Final = "urn:xmpp:hints"  # XEP-0334 Message Processing Hints
MUC_USER: Final = "http://jabber.org/protocol/muc#user"
PUBSUB: Final = "http://jabber.org/protocol/pubsub"  # XEP-0060
PUBSUB_OWNER: Final = "http://jabber.org/protocol/pubsub#owner"
PUBSUB_EVENT: Final = "http://jabber.org/protocol/pubsub#event"
PUBSUB_ERRORS: Final = "http://jabber.org/protocol/pubsub#errors"
CAPS: Final = "http://jabber.org/protocol/caps"  # XEP-0115
LAST: Final = "jabber:iq:last"  # XEP-0012 Last Activity
TIME: Final = "urn:xmpp:time"  # XEP-0202 Entity Time
CSI: Final = "urn:xmpp:csi:0"  # XEP-0352 Client State Indication
PUSH: Final = "urn:xmpp:push:0"  # XEP-0357 Push Notifications
PUSH_SUMMARY: Final = "urn:xmpp:push:summary"
PUBSUB_PUBLISH_OPTIONS: Final = "http://jabber.org/protocol/pubsub#publish-options"
SERVER_INFO: Final = "http://jabber.org/network/serverinfo"  # XEP-0157 form type
CHAT_STATES: Final = "http://jabber.org/protocol/chatstates"
COMPONENT_ACCEPT: Final = "jabber:component:accept"  # XEP-0114 Jabber Component Protocol
EXTDISCO: Final = "urn:xmpp:extdisco:2"  # XEP-0215 External Service Discovery
HTTP_UPLOAD: Final = "urn:xmpp:http:upload:0"  # XEP-0363 HTTP File Upload
SASL2: Final = "urn:xmpp:sasl:2"  # XEP-0388 Extensible SASL Profile
BIND2: Final = "urn:xmpp:bind:0"  # XEP-0386 Bind 2
FAST: Final = "urn:xmpp:fast:0"  # XEP-0484 Fast Authentication Streamlining Tokens
SASL_CB: Final = "urn:xmpp:sasl-cb:0"  # XEP-0440 SASL Channel-Binding Type Capability
AVATAR_DATA: Final = "urn:xmpp:avatar:data"  # XEP-0084 User Avatar
AVATAR_METADATA: Final = "urn:xmpp:avatar:metadata"
VCARD_UPDATE: Final = "vcard-temp:x:update"  # XEP-0153 vCard-Based Avatars
PEP_VCARD_CONVERSION: Final = "urn:xmpp:pep-vcard-conversion:0"  # XEP-0398

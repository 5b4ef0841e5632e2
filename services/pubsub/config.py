"""Node configuration (XEP-0060 §8.2, the ``pubsub#node_config`` form), subscription
options (§6.3, ``pubsub#subscribe_options``) and the errors of XEP-0060 by name.

A configuration is a dict of field var -> normalised value (bool, int, str or list of str)
stored as JSON with the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from shared.xmpp import ns
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StanzaErrorType

NODE_CONFIG: Final = "http://jabber.org/protocol/pubsub#node_config"
SUBSCRIBE_OPTIONS: Final = "http://jabber.org/protocol/pubsub#subscribe_options"
PUBLISH_OPTIONS: Final = "http://jabber.org/protocol/pubsub#publish-options"
META_DATA: Final = "http://jabber.org/protocol/pubsub#meta-data"

ACCESS_MODELS: Final = ("open", "presence", "roster", "whitelist", "authorize")
PUBLISH_MODELS: Final = ("publishers", "subscribers", "open")
SEND_LAST: Final = ("never", "on_sub", "on_sub_and_presence")
NOTIFICATION_TYPES: Final = ("normal", "headline")


@dataclass(frozen=True, slots=True)
class Field:
    kind: str  # boolean, int, max (an int or "max"), list-single, list-multi, text-single
    label: str
    options: tuple[str, ...] = ()


FIELDS: Final[dict[str, Field]] = {
    "pubsub#title": Field("text-single", "A friendly name for the node"),
    "pubsub#access_model": Field("list-single", "Who may subscribe and retrieve items",
                                 ACCESS_MODELS),
    "pubsub#publish_model": Field("list-single", "Who may publish items", PUBLISH_MODELS),
    "pubsub#max_items": Field("max", "Max number of items to persist"),
    "pubsub#persist_items": Field("boolean", "Persist items to storage"),
    "pubsub#deliver_notifications": Field("boolean", "Deliver event notifications"),
    "pubsub#deliver_payloads": Field("boolean", "Deliver payloads with event notifications"),
    "pubsub#notify_retract": Field("boolean", "Notify subscribers when items are removed"),
    "pubsub#notify_delete": Field("boolean", "Notify subscribers when the node is deleted"),
    "pubsub#notify_config": Field("boolean",
                                  "Notify subscribers when the configuration changes"),
    "pubsub#send_last_published_item": Field("list-single", "When to send the last item",
                                             SEND_LAST),
    "pubsub#item_expire": Field("int", "Seconds after which items expire (0: never)"),
    "pubsub#notification_type": Field("list-single", "Message type of notifications",
                                      NOTIFICATION_TYPES),
    "pubsub#roster_groups_allowed": Field("list-multi", "Roster groups allowed to subscribe"),
    "pubsub#max_payload_size": Field("int", "Max payload size in bytes (read only)"),
}
READ_ONLY: Final = frozenset({"pubsub#max_payload_size"})


def defaults(pep: bool, max_items: int, max_payload: int) -> dict[str, Any]:
    """A new node's configuration: PEP nodes follow XEP-0163 §4.3 (presence access, the
    last item on presence), generic nodes XEP-0060's usual open leaf."""
    return {
        "pubsub#title": "",
        "pubsub#access_model": "presence" if pep else "open",
        "pubsub#publish_model": "publishers",
        "pubsub#max_items": 1 if pep else min(10, max_items),
        "pubsub#persist_items": True,
        "pubsub#deliver_notifications": True,
        "pubsub#deliver_payloads": True,
        "pubsub#notify_retract": True,
        "pubsub#notify_delete": True,
        "pubsub#notify_config": False,
        "pubsub#send_last_published_item": "on_sub_and_presence" if pep else "on_sub",
        "pubsub#item_expire": 0,
        "pubsub#notification_type": "headline",
        "pubsub#roster_groups_allowed": [],
        "pubsub#max_payload_size": max_payload,
    }


# ---- errors (XEP-0060 names the condition and its pubsub#errors element) -----------------


def error(condition: StanzaErrorCondition, app: str = "", *, feature: str = "",
          type_: StanzaErrorType | None = None, text: str | None = None) -> StanzaError:
    """A stanza error with XEP-0060's application condition (``app``, in pubsub#errors;
    ``feature`` for <unsupported feature=…/>)."""
    extra = ""
    if app:
        attr = f" feature={quoteattr(feature)}" if feature else ""
        extra = f'<{app} xmlns="{ns.PUBSUB_ERRORS}"{attr}/>'
    return StanzaError(condition, text, type_, extra=extra)


def item_not_found() -> StanzaError:
    return StanzaError(StanzaErrorCondition.ITEM_NOT_FOUND)


def forbidden() -> StanzaError:
    return StanzaError(StanzaErrorCondition.FORBIDDEN)


def nodeid_required() -> StanzaError:
    return error(StanzaErrorCondition.BAD_REQUEST, "nodeid-required")


def unsupported(feature: str) -> StanzaError:
    return error(StanzaErrorCondition.FEATURE_NOT_IMPLEMENTED, "unsupported", feature=feature)


# ---- data forms (XEP-0004) ------------------------------------------------------------------


def form_values(x: etree._Element) -> tuple[str, dict[str, list[str]]]:
    """(FORM_TYPE, var -> values) of a submitted form."""
    values: dict[str, list[str]] = {}
    for f in x.findall(f"{{{ns.DATA}}}field"):
        var = f.get("var")
        if var:
            values[var] = [v.text or "" for v in f.findall(f"{{{ns.DATA}}}value")]
    form_type = (values.pop("FORM_TYPE", None) or [""])[0]
    return form_type, values


def find_form(parent: etree._Element | None) -> etree._Element | None:
    if parent is None:
        return None
    return parent.find(f"{{{ns.DATA}}}x")


def _value(var: str, raw: list[str], max_items: int) -> Any:
    spec = FIELDS[var]
    bad = error(StanzaErrorCondition.NOT_ACCEPTABLE, text=f"invalid value for {var}")
    if spec.kind == "list-multi":
        return list(raw)
    one = raw[0].strip() if raw else ""
    if spec.kind == "boolean":
        if one in ("1", "true"):
            return True
        if one in ("0", "false"):
            return False
        raise bad
    if spec.kind in ("int", "max"):
        if spec.kind == "max" and one == "max":  # XEP-0060 §7.1.5 (v1.16): the most allowed
            return max_items
        if not one.isdigit():
            raise bad
        number = int(one)
        if spec.kind == "max" and not 1 <= number <= max_items:
            raise error(StanzaErrorCondition.NOT_ACCEPTABLE,
                        text=f"pubsub#max_items must be 1..{max_items}")
        return number
    if spec.options and one not in spec.options:
        raise bad
    return one


def apply_form(config: Mapping[str, Any], values: Mapping[str, list[str]], max_items: int
               ) -> dict[str, Any]:
    """The configuration with a submitted node_config form applied (§8.2.5); unknown or
    read-only fields and invalid values are refused with <not-acceptable/> (§8.2.5.3)."""
    new = dict(config)
    for var, raw in values.items():
        if var not in FIELDS:
            raise error(StanzaErrorCondition.NOT_ACCEPTABLE, text=f"unsupported field {var}")
        if var in READ_ONLY:
            continue
        new[var] = _value(var, raw, max_items)
    return new


def preconditions_met(config: Mapping[str, Any], values: Mapping[str, list[str]],
                      max_items: int) -> bool:
    """XEP-0060 §7.1.5: every publish-option names the node's current value."""
    for var, raw in values.items():
        if var not in FIELDS:
            return False
        try:
            wanted = _value(var, raw, max_items)
        except StanzaError:
            return False
        if config.get(var) != wanted:
            return False
    return True


def _field_xml(var: str, value: Any) -> str:
    spec = FIELDS[var]
    options = "".join(f"<option><value>{o}</value></option>" for o in spec.options)
    if spec.kind == "list-multi":
        values = "".join(f"<value>{escape(v)}</value>" for v in value)
    elif spec.kind == "boolean":
        values = f"<value>{'1' if value else '0'}</value>"
    else:
        values = f"<value>{escape(str(value))}</value>"
    kind = {"int": "text-single", "max": "text-single"}.get(spec.kind, spec.kind)
    return (f"<field var={quoteattr(var)} type={quoteattr(kind)} label={quoteattr(spec.label)}>"
            f"{options}{values}</field>")


def config_form(config: Mapping[str, Any], form_type: str = NODE_CONFIG,
                type_: str = "form") -> str:
    """The node's configuration as a data form (§8.2.1; ``META_DATA`` result for disco)."""
    fields = "".join(_field_xml(var, config[var]) for var in FIELDS if var in config)
    return (f'<x xmlns="{ns.DATA}" type="{type_}"><field var="FORM_TYPE" type="hidden">'
            f"<value>{form_type}</value></field>{fields}</x>")


def options_form(deliver: bool) -> str:
    """Subscription options (§6.3): only pubsub#deliver is supported."""
    return (f'<x xmlns="{ns.DATA}" type="form"><field var="FORM_TYPE" type="hidden">'
            f"<value>{SUBSCRIBE_OPTIONS}</value></field>"
            '<field var="pubsub#deliver" type="boolean" label="Enable delivery?">'
            f"<value>{'1' if deliver else '0'}</value></field></x>")


def parse_options(values: Mapping[str, list[str]]) -> dict[str, Any]:
    """Submitted subscription options; unknown fields are <not-acceptable/>."""
    options: dict[str, Any] = {}
    for var, raw in values.items():
        if var != "pubsub#deliver":
            raise error(StanzaErrorCondition.NOT_ACCEPTABLE, text=f"unsupported option {var}")
        one = raw[0].strip() if raw else ""
        if one not in ("0", "1", "true", "false"):
            raise error(StanzaErrorCondition.BAD_REQUEST, "invalid-options")
        options["deliver"] = one in ("1", "true")
    return options

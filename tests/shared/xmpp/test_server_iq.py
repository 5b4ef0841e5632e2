"""The server's own answers: XEP-0012 uptime, XEP-0202 time, XEP-0157 contact addresses."""

from __future__ import annotations

import pytest
from lxml import etree

from shared.xmpp import ns, server_iq
from shared.xmpp.errors import StanzaError


def iq(child: str, type_: str = "get") -> etree._Element:
    return etree.fromstring(f'<iq xmlns="jabber:client" type="{type_}" id="1">{child}</iq>')


def test_xep0012_5_server_uptime_in_seconds() -> None:
    info = server_iq.ServerInfo(started=1000.0)
    reply = server_iq.answer(iq(f'<query xmlns="{ns.LAST}"/>'), "get", info, now=1123.7)
    assert reply == f'<query xmlns="{ns.LAST}" seconds="123"/>'


def test_xep0202_3_entity_time_in_utc() -> None:
    reply = server_iq.answer(iq(f'<time xmlns="{ns.TIME}"/>'), "get", now=1_700_000_000)
    assert reply == (f'<time xmlns="{ns.TIME}"><tzo>+00:00</tzo>'
                     "<utc>2023-11-14T22:13:20Z</utc></time>")


def test_xep0202_set_is_not_answered_with_a_result() -> None:
    reply = server_iq.answer(iq(f'<time xmlns="{ns.TIME}"/>', "set"), "set", now=1.0)
    assert isinstance(reply, StanzaError)


def test_xep0157_contact_addresses_in_the_disco_info_form() -> None:
    contacts = server_iq.parse_contact_addresses(
        "abuse-addresses=mailto:abuse@example.com; admin-addresses=xmpp:admin@example.com,"
        "mailto:admin@example.com")
    info = server_iq.ServerInfo(contacts=contacts)
    reply = server_iq.answer(iq(f'<query xmlns="{ns.DISCO_INFO}"/>'), "get", info)
    assert isinstance(reply, str)
    query = etree.fromstring(reply)
    form = query.find(f"{{{ns.DATA}}}x")
    assert form is not None and form.get("type") == "result"
    fields = {f.get("var"): [v.text for v in f] for f in form}
    assert fields == {
        "FORM_TYPE": [ns.SERVER_INFO],
        "abuse-addresses": ["mailto:abuse@example.com"],
        "admin-addresses": ["xmpp:admin@example.com", "mailto:admin@example.com"],
    }


def test_disco_lists_exactly_what_is_answered() -> None:
    reply = server_iq.answer(iq(f'<query xmlns="{ns.DISCO_INFO}"/>'), "get",
                             server_iq.ServerInfo(in_band=True))
    assert isinstance(reply, str)
    features = {f.get("var") for f in etree.fromstring(reply)
                if f.tag == f"{{{ns.DISCO_INFO}}}feature"}
    assert {ns.LAST, ns.TIME, ns.REGISTER} <= features
    assert ns.DATA not in reply  # no form without contact addresses
    plain = server_iq.answer(iq(f'<query xmlns="{ns.DISCO_INFO}"/>'), "get")
    assert isinstance(plain, str) and ns.REGISTER not in plain


@pytest.mark.parametrize("text", [
    "owner-addresses=mailto:x@example.com",  # not a XEP-0157 field
    "abuse-addresses=abuse@example.com",  # not a URI
    "abuse-addresses",
    "abuse-addresses=mailto:a@b;abuse-addresses=mailto:c@d",
])
def test_xep0157_bad_settings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        server_iq.parse_contact_addresses(text)

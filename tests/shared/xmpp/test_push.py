"""XEP-0357, the protocol part: enable/disable requests and the summary notification."""

from __future__ import annotations

import pytest
from lxml import etree

from shared.xmpp import ns, push
from shared.xmpp.errors import StanzaError

FORM = (
    f'<x xmlns="{ns.DATA}" type="submit"><field var="FORM_TYPE"><value>'
    f"{ns.PUBSUB_PUBLISH_OPTIONS}</value></field>{{fields}}</x>"
)


def element(xml: str) -> etree._Element:
    return etree.fromstring(xml)


def test_xep0357_5_enable_with_publish_options_and_our_include_body_field() -> None:
    fields = ('<field var="secret"><value>s3</value></field>'
              '<field var="include-body"><value>true</value></field>')
    request = push.parse(element(
        f'<enable xmlns="{ns.PUSH}" jid="push.example.net" node="n1">'
        f"{FORM.format(fields=fields)}</enable>"))
    assert isinstance(request, push.Enable)
    assert (request.service, request.node, request.include_body) == ("push.example.net", "n1",
                                                                      True)
    assert request.options is not None
    sent = element(request.options.decode())
    assert [f.get("var") for f in sent] == ["FORM_TYPE", "secret"]  # include-body taken out


def test_xep0357_5_enable_without_options_sends_none() -> None:
    request = push.parse(element(f'<enable xmlns="{ns.PUSH}" jid="a@b/c" node="n"/>'))
    assert isinstance(request, push.Enable)
    assert request.options is None and not request.include_body


@pytest.mark.parametrize("xml", [
    f'<enable xmlns="{ns.PUSH}" node="n"/>',  # no jid
    f'<enable xmlns="{ns.PUSH}" jid="push.example.net"/>',  # no node
    f'<enable xmlns="{ns.PUSH}" jid="@@" node="n"/>',  # not a JID
])
def test_xep0357_5_malformed_enable_is_refused(xml: str) -> None:
    with pytest.raises(StanzaError):
        push.parse(element(xml))


def test_xep0357_6_disable_one_node_or_all() -> None:
    assert push.parse(element(f'<disable xmlns="{ns.PUSH}" jid="p.example" node="n"/>')) == \
        push.Disable("p.example", "n")
    assert push.parse(element(f'<disable xmlns="{ns.PUSH}" jid="p.example"/>')) == \
        push.Disable("p.example", None)


def test_xep0357_7_notification_is_a_pubsub_publish_with_the_summary() -> None:
    options = FORM.format(fields='<field var="secret"><value>s3</value></field>').encode()
    iq = element(push.notification("push-1", "u@example.com", "push.example.net", "n1", 2,
                                   "f@example.com/r", None, options).decode())
    assert (iq.get("type"), iq.get("from"), iq.get("to")) == ("set", "u@example.com",
                                                              "push.example.net")
    publish = iq.find(f"{{{ns.PUBSUB}}}pubsub/{{{ns.PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "n1"
    form = publish.find(f".//{{{ns.PUSH}}}notification/{{{ns.DATA}}}x")
    assert form is not None
    values = {f.get("var"): f.findtext(f"{{{ns.DATA}}}value") for f in form}
    assert values == {"FORM_TYPE": ns.PUSH_SUMMARY, "message-count": "2",
                      "last-message-sender": "f@example.com/r"}  # no body unless allowed
    assert iq.find(f".//{{{ns.PUBSUB}}}publish-options/{{{ns.DATA}}}x") is not None

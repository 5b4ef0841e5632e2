"""XEP-0115 verification strings (shared/xmpp/caps.py), with the XEP's own examples."""

from __future__ import annotations

from lxml import etree

from shared.xmpp.caps import caps_of, ver_of

SIMPLE = b"""<query xmlns='http://jabber.org/protocol/disco#info'
  node='http://code.google.com/p/exodus#QgayPKawpkPSDYmwT/WM94uAlu0='>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

COMPLEX = """<query xmlns='http://jabber.org/protocol/disco#info'>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>""".encode()


def test_simple_generation_example_section_5_2() -> None:
    assert ver_of(etree.fromstring(SIMPLE), "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_complex_generation_example_section_5_3() -> None:
    assert ver_of(etree.fromstring(COMPLEX), "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_a_tampered_answer_does_not_hash_to_the_ver() -> None:
    tampered = SIMPLE.replace(b"muc'/>", b"muc'/><feature var='urn:xmpp:avatar:data+notify'/>")
    assert ver_of(etree.fromstring(tampered), "sha-1") != "QgayPKawpkPSDYmwT/WM94uAlu0="
    assert ver_of(etree.fromstring(SIMPLE), "md5") is None


def test_caps_of_a_presence() -> None:
    presence = etree.fromstring(
        b"<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' "
        b"hash='sha-1' node='http://example.org/client' ver='abc='/></presence>")
    caps = caps_of(presence)
    assert caps is not None and (caps.node, caps.ver, caps.hash) == (
        "http://example.org/client", "abc=", "sha-1")
    assert caps_of(etree.fromstring(b"<presence xmlns='jabber:client'/>")) is None

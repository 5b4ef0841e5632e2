"""XEP-0198 Stream Management in the c2s machine: enable, counting, acks, resume (sans-I/O)."""

from __future__ import annotations

import dataclasses

import pytest

from shared.xmpp import sm
from shared.xmpp.c2s import (
    Acked,
    AckRequested,
    C2SStream,
    ResumeRequested,
    SMEnabled,
    StanzaIn,
    StreamConfig,
    StreamEnded,
)
from shared.xmpp.errors import StanzaError, StanzaErrorCondition, StreamErrorCondition
from shared.xmpp.jid import JID

from .test_c2s import CONFIG, CREDS, HEADER, after_tls, authenticated, bound, events, plain

SM = b"urn:xmpp:sm:3"
ENABLE = b"<enable xmlns='urn:xmpp:sm:3'/>"
ENABLE_RESUME = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
R = b"<r xmlns='urn:xmpp:sm:3'/>"


def ack(h: int) -> bytes:
    return f"<a xmlns='urn:xmpp:sm:3' h='{h}'/>".encode()


def message(n: int) -> bytes:
    return f"<message to='romeo@example.com' id='m{n}'><body>{n}</body></message>".encode()


def enabled(stream: C2SStream, request: bytes = ENABLE_RESUME) -> SMEnabled:
    [event] = events(stream, request)
    assert isinstance(event, SMEnabled)
    return event


def features_after_auth(config: StreamConfig) -> bytes:
    stream = after_tls(config)
    events(stream, plain("juliet", "pencil"))
    stream.credentials_loaded(CREDS)
    events(stream)
    stream.data_to_send()
    events(stream, HEADER)
    return stream.data_to_send()


def test_xep0198_2_sm_feature_offered_after_authentication_only() -> None:
    assert b'<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>' in features_after_auth(CONFIG)
    assert f'<sm xmlns="{SM.decode()}"/>'.encode() in features_after_auth(CONFIG)
    assert SM not in after_tls_features()
    off = dataclasses.replace(CONFIG, stream_management=False)
    assert SM not in features_after_auth(off)


def after_tls_features() -> bytes:
    stream = C2SStream(CONFIG)
    events(stream, HEADER)
    return stream.data_to_send()


def test_xep0198_3_enable_without_resume() -> None:
    stream = bound()
    event = enabled(stream, ENABLE)
    assert event == SMEnabled("", 0)
    out = stream.data_to_send()
    assert out == b'<enabled xmlns="urn:xmpp:sm:3"/>'
    assert stream.sm is not None and not stream.sm.resumable


def test_xep0198_3_enable_with_resume_gives_id_and_default_max() -> None:
    stream = bound()
    event = enabled(stream)
    assert event.id and event.max_s == CONFIG.sm_resume_s == 300
    out = stream.data_to_send()
    assert out.startswith(b'<enabled xmlns="urn:xmpp:sm:3" id=')
    assert f'id="{event.id}" resume="true" max="300"'.encode() in out


def test_xep0198_5_enabled_names_the_location_only_when_set() -> None:
    stream = bound()
    enabled(stream)
    assert b"location" not in stream.data_to_send()  # the default: no attribute
    config = dataclasses.replace(CONFIG, sm_location="[2001:db8::1]:5222")
    stream = bound(config=config)
    enabled(stream)
    assert stream.data_to_send().endswith(b' max="300" location="[2001:db8::1]:5222"/>')
    stream = bound(config=config)
    enabled(stream, ENABLE)  # no resumption: nowhere to resume (§5)
    assert b"location" not in stream.data_to_send()


@pytest.mark.parametrize(
    "location", ["xmpp.example.com:5222", "192.0.2.7:5222", "[2001:db8::1]:5222", "host", ""]
)
def test_xep0198_5_location_accepted(location: str) -> None:
    assert sm.check_location(location) == location


@pytest.mark.parametrize(
    "location", ["2001:db8::1:5222", "[2001:db8::1]5222", "[nope]:1", "host:0", "host:65536",
                 ":5222", "a b:5222", 'x"y:1', "host:port"]
)
def test_xep0198_5_location_refused(location: str) -> None:
    with pytest.raises(ValueError):
        sm.check_location(location)


@pytest.mark.parametrize(("asked", "granted"), [(60, 60), (10_000, 600), (0, 300)])
def test_xep0198_5_client_max_honoured_up_to_the_setting(asked: int, granted: int) -> None:
    config = dataclasses.replace(CONFIG, sm_resume_s=300, sm_resume_max_s=600)
    stream = bound(config=config)
    event = enabled(stream, f"<enable xmlns='urn:xmpp:sm:3' resume='1' max='{asked}'/>".encode())
    assert event.max_s == granted
    assert f'max="{granted}"'.encode() in stream.data_to_send()


def test_xep0198_3_enable_before_bind_is_unexpected_request() -> None:
    stream = authenticated()
    assert events(stream, ENABLE) == []
    out = stream.data_to_send()
    assert b"<failed xmlns=\"urn:xmpp:sm:3\"><unexpected-request" in out
    assert stream.sm is None and not stream.closed


def test_xep0198_3_enable_twice_is_unexpected_request_with_h() -> None:
    stream = bound()
    enabled(stream)
    stream.data_to_send()
    events(stream, message(1))
    assert events(stream, ENABLE) == []
    out = stream.data_to_send()
    assert out.startswith(b'<failed xmlns="urn:xmpp:sm:3" h="1"><unexpected-request')


def test_xep0198_4_every_client_stanza_counted_bounced_ones_too() -> None:
    stream = bound()
    enabled(stream)
    stream.data_to_send()
    got = events(stream, message(1) + message(2) + b"<iq type='bogus' id='x'/>" + R)
    assert [type(e) for e in got] == [StanzaIn, StanzaIn]
    out = stream.data_to_send()
    assert b"<iq" in out and b"bad-request" in out  # the bounce
    assert out.endswith(b'<a xmlns="urn:xmpp:sm:3" h="3"/>')


def test_xep0198_4_the_machines_own_stanzas_are_counted_and_queued() -> None:
    stream = bound()
    enabled(stream)
    stream.data_to_send()
    [st] = events(stream, message(1))
    assert isinstance(st, StanzaIn)
    stream.stanza_error(st.element, StanzaError(StanzaErrorCondition.SERVICE_UNAVAILABLE))
    session = b"<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>"
    events(stream, b"<iq type='set' id='s'>" + session + b"</iq>")
    queue = stream.sm
    assert queue is not None
    assert queue.sent == 2 and len(queue.queue) == 2
    assert b"service-unavailable" in queue.queue[0] and b'id="s"' in queue.queue[1]


def test_xep0198_4_acks_drop_acknowledged_stanzas_in_order() -> None:
    stream = bound()
    enabled(stream)
    queue = stream.sm
    assert queue is not None
    for n in range(5):
        queue.push(f"<message id='{n}'/>".encode())
    assert events(stream, ack(2)) == [Acked(2)]
    assert list(queue.queue) == [b"<message id='2'/>", b"<message id='3'/>", b"<message id='4'/>"]
    assert events(stream, ack(2)) == [Acked(0)]  # the same h again: nothing new
    assert events(stream, ack(1)) == [Acked(0)]  # an older, smaller h: stale, harmless
    assert events(stream, ack(5)) == [Acked(3)]
    assert not queue.queue and queue.unacked == 0


def test_xep0198_4_h_higher_than_sent_is_undefined_condition_handled_count_too_high() -> None:
    stream = bound()
    enabled(stream)
    stream.data_to_send()
    assert stream.sm is not None
    stream.sm.push(b"<message/>")
    [ended] = events(stream, ack(2))
    assert ended == StreamEnded(StreamErrorCondition.UNDEFINED_CONDITION)
    out = stream.data_to_send()
    assert b"<undefined-condition" in out
    assert b'<handled-count-too-high xmlns="urn:xmpp:sm:3" h="2" send-count="1"/>' in out


def test_xep0198_4_counters_wrap_at_2_32() -> None:
    queue = sm.Queue("x", 300)
    queue.sent = queue.acked = sm.MOD - 1
    queue.push(b"<a1/>")
    queue.push(b"<a2/>")
    assert queue.check(1) is None
    assert queue.ack(1) == 2 and not queue.queue
    assert queue.check(2) is not None


def test_xep0198_4_request_ack_writes_r_only_with_sm() -> None:
    stream = bound()
    stream.request_ack()
    assert stream.data_to_send() == b""
    enabled(stream)
    stream.data_to_send()
    stream.request_ack()
    assert stream.data_to_send() == b'<r xmlns="urn:xmpp:sm:3"/>'


def test_xep0198_4_r_and_a_before_enable_are_ignored() -> None:
    stream = bound()
    assert events(stream, R + ack(3)) == []
    assert stream.data_to_send() == b"" and not stream.closed


# ---- resumption (§5) -----------------------------------------------------------------------


def resume(stream: C2SStream, previd: str, h: int) -> ResumeRequested:
    [event] = events(stream, f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>".encode())
    assert isinstance(event, ResumeRequested)
    return event


def fresh() -> C2SStream:
    return authenticated()


def test_xep0198_5_resume_answers_resumed_and_resends_the_unacked_in_order() -> None:
    old = bound()
    sm_id = enabled(old).id
    events(old, message(1) + message(2))  # the server handled 2
    queue = old.sm
    assert queue is not None
    for n in range(4):
        queue.push(f"<message id='out{n}'/>".encode())
    new = fresh()
    assert resume(new, sm_id, 1) == ResumeRequested(sm_id, 1)
    assert new.next_event() is None  # waits for the caller
    assert new.resume_succeeded(JID("juliet", "example.com", "balcony"), queue)
    out = new.data_to_send()
    assert out == (
        f'<resumed xmlns="urn:xmpp:sm:3" previd="{sm_id}" h="2"/>'.encode()
        + b"<message id='out1'/><message id='out2'/><message id='out3'/>"
    )
    assert new.bound and new.sm is queue and queue.unacked == 3
    # counting goes on from where the old stream was
    events(new, message(3) + R)
    assert new.data_to_send().endswith(b'<a xmlns="urn:xmpp:sm:3" h="3"/>')
    assert events(new, ack(4)) == [Acked(3)]


def test_xep0198_5_resume_with_h_too_high_is_a_stream_error_and_leaves_the_queue() -> None:
    old = bound()
    sm_id = enabled(old).id
    queue = old.sm
    assert queue is not None
    queue.push(b"<message/>")
    new = fresh()
    resume(new, sm_id, 5)
    assert not new.resume_succeeded(JID("juliet", "example.com", "balcony"), queue)
    [ended] = events(new)
    assert ended == StreamEnded(StreamErrorCondition.UNDEFINED_CONDITION)
    assert b"handled-count-too-high" in new.data_to_send()
    assert list(queue.queue) == [b"<message/>"] and not new.bound


def test_xep0198_5_failed_resume_carries_h_when_the_server_knows_it() -> None:
    stream = fresh()
    resume(stream, "gone-but-counted", 0)
    stream.resume_failed(h=7)
    assert stream.data_to_send() == (
        b'<failed xmlns="urn:xmpp:sm:3" h="7"><item-not-found '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>'
    )


def test_xep0198_5_unknown_previd_is_item_not_found_and_bind_still_works() -> None:
    stream = fresh()
    resume(stream, "nope", 0)
    stream.resume_failed()
    assert stream.data_to_send() == (
        b'<failed xmlns="urn:xmpp:sm:3"><item-not-found '
        b'xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>'
    )
    [bind] = events(
        stream,
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
    )
    assert bind.resource is None  # type: ignore[union-attr]


def test_xep0198_5_resume_before_auth_or_after_bind_is_unexpected_request() -> None:
    stream = bound()
    assert events(stream, b"<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>") == []
    assert b"<unexpected-request" in stream.data_to_send()
    before = C2SStream(dataclasses.replace(CONFIG, tls_required=False))
    events(before, HEADER)
    before.data_to_send()
    assert events(before, b"<resume xmlns='urn:xmpp:sm:3' previd='x' h='0'/>") == []
    assert b"<unexpected-request" in before.data_to_send()


def test_xep0198_5_resume_not_offered_when_resumption_is_off() -> None:
    config = dataclasses.replace(CONFIG, sm_resume_s=0)
    stream = bound(config=config)
    event = enabled(stream)
    assert event == SMEnabled("", 0)  # resume='true' asked, not granted
    assert b"resume=" not in stream.data_to_send()


def test_xep0198_5_bad_h_in_resume_is_a_stream_error() -> None:
    stream = fresh()
    [ended] = events(stream, b"<resume xmlns='urn:xmpp:sm:3' previd='x' h='-1'/>")
    assert isinstance(ended, StreamEnded) and ended.error is not None


def test_xep0198_4_a_batch_delivery_is_split_into_stanzas_for_counting() -> None:
    from shared.xmpp.stanza import split_stanzas

    batch = (
        b'<presence xmlns="jabber:client" from="a@example.com/x" to="juliet@example.com/r"/>'
        b'<presence xmlns="jabber:client" from="b@example.com" type="subscribe">'
        b"<status>hi &amp; bye</status></presence>"
    )
    parts = split_stanzas(batch)
    assert len(parts) == 2
    assert b"".join(parts) == batch  # canonical bytes stay as they were


def test_xep0198_queue_handed_between_pods_keeps_counters_and_order() -> None:
    queue = sm.Queue("id1", 60)
    queue.handled = 7
    for n in range(5):
        queue.push(f"<message><body>{n}</body></message>".encode())
    queue.ack(2)
    copy = sm.import_queue("id1", 60, sm.export_queue(queue))
    assert (copy.handled, copy.sent, copy.acked) == (7, 5, 2)
    assert list(copy.queue) == list(queue.queue)
    assert copy.ack(5) == 3 and not copy.queue
    with pytest.raises(ValueError):
        sm.import_queue("id1", 60, b"7 5 2\x00<message/>")  # three announced, one there


def test_xep0198_4_deferred_ack_answers_with_the_h_of_the_request_when_asked_to() -> None:
    """Durable delivery: an <r/> comes out as AckRequested with the count at its arrival;
    the caller answers once those stanzas are stored, even if more arrived meanwhile."""
    stream = bound(config=dataclasses.replace(CONFIG, sm_deferred_acks=True))
    enabled(stream)
    stream.data_to_send()
    got = events(stream, message(1) + message(2) + R + message(3))
    assert [type(e) for e in got] == [StanzaIn, StanzaIn, AckRequested, StanzaIn]
    assert got[2] == AckRequested(2)
    assert b"<a " not in stream.data_to_send()  # not before the caller says so
    stream.answer_ack(2)
    assert stream.data_to_send() == b'<a xmlns="urn:xmpp:sm:3" h="2"/>'

"""The metric naming checker rejects what the rules forbid (so the live check can fail)."""

from __future__ import annotations

import pytest

from tests.support import metric_rules


def _problems(text: str) -> list[str]:
    found = metric_rules.type_line_problems(text)
    return found + [p for fam in metric_rules.families(text) for p in metric_rules.problems(fam)]


def test_good_metrics_pass() -> None:
    text = (
        "# HELP stanzad_cm_logins_total Logins.\n# TYPE stanzad_cm_logins_total counter\n"
        'stanzad_cm_logins_total{mechanism="PLAIN",result="success"} 1.0\n'
        "# HELP stanzad_bus_batch_messages Batch.\n# TYPE stanzad_bus_batch_messages histogram\n"
        'stanzad_bus_batch_messages_bucket{service="router",le="+Inf"} 1.0\n'
        'stanzad_bus_batch_messages_count{service="router"} 1.0\n'
        "# HELP process_open_fds fds.\n# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n"
    )
    assert _problems(text) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("# HELP xmpp_logins_total x\n# TYPE xmpp_logins_total counter\nxmpp_logins_total 1\n",
         "not stanzad_*"),
        ("# HELP stanzad_web_hits_total x\n# TYPE stanzad_web_hits_total counter\n"
         "stanzad_web_hits_total 1\n", "unknown component"),
        ("# HELP stanzad_cm_logins x\n# TYPE stanzad_cm_logins counter\nstanzad_cm_logins 1\n",
         "a counter must end in _total"),
        ("# HELP stanzad_cm_open_total x\n# TYPE stanzad_cm_open_total gauge\n"
         "stanzad_cm_open_total 1\n", "must not end in _total"),
        ("# HELP stanzad_cm_bind_duration_ms x\n# TYPE stanzad_cm_bind_duration_ms gauge\n"
         "stanzad_cm_bind_duration_ms 1\n", "base unit"),
        ("# HELP stanzad_cm_bind_latency x\n# TYPE stanzad_cm_bind_latency histogram\n"
         'stanzad_cm_bind_latency_bucket{le="+Inf"} 1\nstanzad_cm_bind_latency_count 1\n',
         "seconds"),
        ("# HELP stanzad_cm_sessions x\n# TYPE stanzad_cm_sessions gauge\n"
         'stanzad_cm_sessions{pod="cm-7f9c"} 1\n', "label 'pod'"),
        ("# HELP stanzad_cm_sessions x\n# TYPE stanzad_cm_sessions gauge\n"
         'stanzad_cm_sessions{kind="alice@localhost"} 1\n', "looks like a JID"),
        ("# HELP stanzad_cm_sessions x\n# TYPE stanzad_cm_sessions gauge\n"
         'stanzad_cm_sessions{kind="10.1.2.3"} 1\n', "looks like a JID or an address"),
        ("# TYPE stanzad_cm_sessions gauge\nstanzad_cm_sessions 1\n", "no HELP"),
        ("# HELP stanzad_cm_Sessions x\n# TYPE stanzad_cm_Sessions gauge\n"
         "stanzad_cm_Sessions 1\n", "lower snake case"),
    ],
)
def test_bad_metrics_are_named(text: str, why: str) -> None:
    found = _problems(text)
    assert any(why in p for p in found), found

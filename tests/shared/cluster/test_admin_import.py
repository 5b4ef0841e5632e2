"""Checking the entries of a bulk account import (shared/cluster/admin.py): JIDs
prepared per RFC 7622 and of the served domain only, a password (RFC 8265 OpaqueString)
or ready SCRAM keys."""

from __future__ import annotations

from typing import Any

import pytest

from shared.cluster.admin import (
    AdminError,
    ImportResult,
    PlannedAccount,
    count_results,
    import_entries,
    plan_entry,
    plan_import,
)
from shared.xmpp.credentials import MIN_ITERATIONS, derive_credentials, to_json

DOMAIN = "example.org"
SCRAM = to_json(derive_credentials("pw", MIN_ITERATIONS))


def test_a_password_entry_is_planned_with_its_prepared_jid() -> None:
    # RFC 7622 §3.3: the localpart is case-mapped (UsernameCaseMapped profile)
    planned = plan_entry({"jid": "Alice@Example.ORG", "password": "pw"}, DOMAIN)
    assert planned == PlannedAccount("alice@example.org", password="pw")


def test_a_scram_entry_carries_the_keys() -> None:
    planned = plan_entry({"jid": "bob@example.org", "scram": SCRAM}, DOMAIN)
    assert planned.password is None and planned.creds is not None
    assert to_json(planned.creds) == SCRAM


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("alice@example.org", "not a JSON object"),
        ({"jid": "a@example.org", "password": "pw", "name": "A"}, "unknown field(s) name"),
        ({"password": "pw"}, "'jid' is missing"),
        ({"jid": 7, "password": "pw"}, "'jid' is missing or not a string"),
        ({"jid": "a@other.example", "password": "pw"}, "this cluster serves example.org"),
        ({"jid": "a@example.org/phone", "password": "pw"}, "give a bare JID"),
        ({"jid": "example.org", "password": "pw"}, "give a bare JID"),
        ({"jid": "a b@example.org", "password": "pw"}, "not a JID"),  # RFC 7622 §3.3.1
        ({"jid": "a@example.org"}, "either 'password' or 'scram'"),
        ({"jid": "a@example.org", "password": "pw", "scram": SCRAM}, "either"),
        ({"jid": "a@example.org", "password": ""}, "the password is empty"),
        ({"jid": "a@example.org", "password": 5}, "'password' is not a string"),
        ({"jid": "a@example.org", "password": "bell\x07"}, "not allowed"),  # RFC 8265 §4.2
        ({"jid": "a@example.org", "scram": {"SCRAM-SHA-1": SCRAM["SCRAM-SHA-1"]}},
         "SCRAM-SHA-256 is missing"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(entry: object, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        plan_entry(entry, DOMAIN)
    assert reason in str(err.value)


def test_one_bad_entry_does_not_stop_the_others() -> None:
    plan = plan_import([
        {"jid": "a@example.org", "password": "pw"},
        {"jid": "b@elsewhere", "password": "pw"},
        [],
        {"jid": "c@example.org", "scram": SCRAM},
    ], DOMAIN)
    assert [type(p) for p in plan] == [PlannedAccount, ImportResult, ImportResult, PlannedAccount]
    bad = plan[1]
    assert isinstance(bad, ImportResult)
    assert (bad.jid, bad.result) == ("b@elsewhere", "invalid")
    assert plan[2] == ImportResult("", "invalid", "not a JSON object")


def test_a_jid_listed_twice_is_invalid_the_second_time_after_preparation() -> None:
    plan = plan_import([
        {"jid": "a@example.org", "password": "pw"},
        {"jid": "A@example.org", "scram": SCRAM},  # the same account once prepared
    ], DOMAIN)
    assert isinstance(plan[0], PlannedAccount)
    assert plan[1] == ImportResult("a@example.org", "invalid", "listed twice (first as entry 0)")


def test_the_import_minimum_iteration_count_applies_to_ready_keys_only() -> None:
    plan = plan_import([{"jid": "a@example.org", "scram": SCRAM},
                        {"jid": "b@example.org", "password": "pw"}], DOMAIN, 10_000)
    assert isinstance(plan[0], ImportResult) and "iterations" in plan[0].reason
    assert isinstance(plan[1], PlannedAccount)


@pytest.mark.parametrize("doc", [[{"jid": "a"}], {"accounts": [{"jid": "a"}]}])
def test_an_import_document_is_a_list_or_an_accounts_object(doc: Any) -> None:
    assert import_entries(doc) == [{"jid": "a"}]


@pytest.mark.parametrize("doc", [{"accounts": {}}, {"users": []}, {"accounts": [], "x": 1},
                                 "a@example.org", None])
def test_other_import_documents_are_refused(doc: Any) -> None:
    with pytest.raises(AdminError, match="accounts"):
        import_entries(doc)


def test_results_are_counted_by_outcome() -> None:
    results = [ImportResult("a", "created"), ImportResult("b", "exists"),
               ImportResult("c", "created")]
    assert count_results(results) == {"created": 2, "exists": 1, "invalid": 0}

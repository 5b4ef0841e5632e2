"""The one map of the cluster's domains (shared/bus/destinations.py)."""

from __future__ import annotations

import pytest

from shared.bus import destinations, subjects
from shared.bus.destinations import Destinations
from shared.runtime.settings import CommonSettings

MAP = Destinations("example.com", 16, {"conference.example.com": "muc",
                                       "pubsub.example.com": "pubsub"})


def test_local_account_goes_to_its_router_partition() -> None:
    assert MAP.subject("juliet@example.com") == subjects.route_for("juliet@example.com", 16)


def test_service_domain_goes_to_its_service_partition() -> None:
    room = "room@conference.example.com"
    assert MAP.subject(room) == subjects.muc(subjects.partition(room, 16))
    assert MAP.subject("pubsub.example.com") == subjects.pubsub(
        subjects.partition("pubsub.example.com", 16))
    assert MAP.service("conference.example.com") == "muc"
    assert MAP.is_local("pubsub.example.com") and not MAP.is_local("example.org")


def test_remote_domain_goes_to_the_s2s_partition_of_the_domain() -> None:
    assert MAP.subject("romeo@example.org") == subjects.s2s(subjects.partition("example.org", 16))
    # the partition of the domain, not of the bare JID: one gateway holds the stream
    assert MAP.subject("nurse@example.org") == MAP.subject("romeo@example.org")


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        Destinations("example.com", 4, {"chat.example.com": "irc"})


def test_settings_derive_service_domains_from_the_domain() -> None:
    settings = CommonSettings(domain="example.com")
    assert destinations.of(settings).services == {"conference.example.com": "muc",
                                                  "pubsub.example.com": "pubsub",
                                                  "upload.example.com": "upload"}
    custom = CommonSettings(domain="example.com", muc_domain="Rooms.Example.com",
                            pubsub_domain="off", upload_domain="off")
    assert custom.service_domains == {"rooms.example.com": "muc"}


def test_component_domains_go_to_the_subject_of_the_domain() -> None:
    """XEP-0114: a component's domain is held by one gateway process, which subscribes to
    the subject of the domain; every JID of the domain goes there, in order."""
    settings = CommonSettings(domain="example.com", upload_domain="off",
                              components="Bot.Example.com=s3cret,bridge.example.com")
    assert settings.component_secrets == {"bot.example.com": "s3cret", "bridge.example.com": ""}
    map_ = destinations.of(settings)
    assert map_.service("bot.example.com") == "component"
    assert map_.subject("anyone@bot.example.com") == subjects.component("bot.example.com")
    assert map_.subject("bot.example.com") == subjects.component("bot.example.com")
    assert map_.subject("x@bridge.example.com") != map_.subject("x@bot.example.com")
    assert "s3cret" not in repr(settings)
    for bad in ("a@b=x", "=x", "bot.example.com=a,bot.example.com=b"):
        with pytest.raises(ValueError):
            CommonSettings(components=bad)

"""Topic and consumer-group names: the derived streams carry the version of the rules they were derived with."""

from __future__ import annotations

from touchpoint.settings import DERIVED_VERSION, load_settings


def test_resolved_and_the_state_tables_carry_the_rules_version_and_the_edge_topics_do_not() -> None:
    settings = load_settings(topic_prefix="tp")
    assert [settings.topic(n) for n in ("resolved", "identity-state", "profile-state")] == [
        f"tp.resolved.v{DERIVED_VERSION}", f"tp.identity-state.v{DERIVED_VERSION}",
        f"tp.profile-state.v{DERIVED_VERSION}"]
    assert [settings.topic(n) for n in ("events.web", "accepted", "dlq", "customer-views", "loyalty")] == [
        "tp.events.web", "tp.accepted", "tp.dlq", "tp.customer-views", "tp.loyalty"]


def test_the_stages_that_derive_with_those_rules_get_groups_of_that_version() -> None:
    settings = load_settings(topic_prefix="tp")
    assert settings.stage_group("ingest") == "tp.stage-ingest"
    assert settings.stage_group("identity") == f"tp.stage-identity.v{DERIVED_VERSION}"
    assert settings.stage_group("profile") == f"tp.stage-profile.v{DERIVED_VERSION}"

"""docker-compose.yml, validated offline: the Compose spec schema, then what we promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
# Every stanzad service in the compose file, and its image command.
STANZAD = {"router": ["router"], "presence": ["presence"], "roster": ["roster"],
           "connection_manager": ["connection-manager"], "s2s_gateway": ["s2s-gateway"],
           "admin": ["admin"]}
# What is published beyond the host's loopback: XMPP for clients and for other servers.
PUBLIC = {"connection_manager": ["5222:5222"], "s2s_gateway": ["5269:5269"]}


@pytest.fixture(scope="module")
def compose(root: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((root / "docker-compose.yml").read_text()))


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_matches_the_compose_spec(root: Path) -> None:
    result = _validate(root / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: a\n    depends_on:\n"
                   "      y: {condition: when_i_feel_like_it}\n")
    assert _validate(bad).returncode != 0


def test_every_dependency_waits_for_a_healthy_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep], dep
    for svc in STANZAD:
        assert {"nats", "redis"} <= set(services[svc]["depends_on"])
    # clients get in only once routing, presence and rosters are served
    assert {"router", "presence", "roster"} <= set(services["connection_manager"]["depends_on"])


def test_stanzad_services_share_one_image_and_pick_their_command(
    compose: dict[str, Any]
) -> None:
    services = compose["services"]
    commands = {name: services[name]["command"] for name in STANZAD}
    assert commands == STANZAD
    assert {services[n]["image"] for n in commands} == {"stanzad:dev"}
    assert {n for n, s in services.items() if s.get("image", "").startswith("stanzad")} == set(
        STANZAD
    )
    for name in commands:
        env = services[name]["environment"]
        assert env["STANZAD_NATS_URL"] == "nats://nats:4222"
        assert env["STANZAD_REDIS_URL"] == "redis://redis:6379/0"


def test_redis_keeps_its_data(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/data")
               for v in redis["volumes"])


def test_only_c2s_and_s2s_are_published_beyond_loopback(compose: dict[str, Any]) -> None:
    published = {name: svc.get("ports", []) for name, svc in compose["services"].items()}
    for name, ports in published.items():
        if name in PUBLIC:
            assert ports == PUBLIC[name], name
        else:
            assert all(p.startswith("127.0.0.1:") for p in ports), name
    assert compose["services"]["connection_manager"]["ulimits"]["nofile"]["soft"] >= 65536


def test_s2s_gateway_listens_on_all_interfaces_with_a_required_secret(
    compose: dict[str, Any]
) -> None:
    svc = compose["services"]["s2s_gateway"]
    env = svc["environment"]
    assert env["STANZAD_S2S_HOST"] == "0.0.0.0" and env["STANZAD_S2S_PORT"] == "5269"
    # `${VAR:?message}`: compose refuses to start without it, as for the admin token
    for var, service in (("STANZAD_S2S_DIALBACK_SECRET", "s2s_gateway"),
                         ("STANZAD_ADMIN_TOKEN", "admin")):
        assert compose["services"][service]["environment"][var].startswith(f"${{{var}:?")
    tls_dir = env["STANZAD_TLS_CERT"].rpartition("/")[0]
    assert env["STANZAD_TLS_KEY"].startswith(tls_dir + "/")
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":" + tls_dir)
               for v in svc["volumes"])


def test_mounted_config_files_exist(compose: dict[str, Any], root: Path) -> None:
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (root / source).exists(), source

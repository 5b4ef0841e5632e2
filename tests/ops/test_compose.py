"""docker-compose.yml, validated offline: the Compose spec schema, then what we promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from devtools import localservers, natsconf
from shared.bus import permissions
from shared.runtime.settings import (
    AdminSettings,
    ConnectionManagerSettings,
    MucSettings,
    PresenceSettings,
    PubsubSettings,
    RosterSettings,
    RouterSettings,
    S2SSettings,
    UploadSettings,
)
from shared.store import acl

CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
# Every stanzad service in the compose file, and its image command.
STANZAD = {"router": ["router"], "presence": ["presence"], "roster": ["roster"], "muc": ["muc"],
           "pubsub": ["pubsub"],
           "connection_manager": ["connection-manager"], "s2s_gateway": ["s2s-gateway"],
           "upload": ["upload"], "admin": ["admin"]}
# What is published beyond the host's loopback: XMPP for clients and for other servers, HTTP
# upload for clients (components: loopback only, XEP-0114 is plain TCP).
# c2s: STARTTLS, direct TLS (XEP-0368), WebSocket/BOSH/host-meta; s2s
PUBLIC = {"connection_manager": ["5222:5222", "5223:5223", "5280:5280"],
          "s2s_gateway": ["5269:5269", "127.0.0.1:5347:5347"], "upload": ["5281:5281"]}
SETTINGS: Final[dict[str, type[BaseSettings]]] = {
    "router": RouterSettings, "presence": PresenceSettings, "roster": RosterSettings,
    "muc": MucSettings, "pubsub": PubsubSettings,
    "connection_manager": ConnectionManagerSettings, "s2s_gateway": S2SSettings,
    "upload": UploadSettings, "admin": AdminSettings,
}
# The NATS identity of each service (shared/bus/permissions.py); the CLI run in the admin
# container (`docker compose exec admin stanzad ...`) uses the admin's, which has the same
# permissions as `cli`.
NATS_ROLES: Final = {name: name for name in STANZAD}
# What `docker compose up` requires (`${VAR:?...}`), as an operator would set it.
REQUIRED: Final = {"STANZAD_ADMIN_TOKEN": "t" * 32, "STANZAD_S2S_DIALBACK_SECRET": "s" * 32}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """``value`` as compose interpolates it from ``env``: ``${VAR}``, ``${VAR:-default}``,
    ``${VAR:?message}`` (an error when unset; ``$$`` is not used in the file)."""

    def one(match: re.Match[str]) -> str:
        name, how, arg = match.groups()
        if env.get(name):
            return env[name]
        if how == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if how == "-" else ""

    return _VARIABLE.sub(one, value)


def environment(svc: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in svc.get("environment", {}).items()}


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
        assert env["STANZAD_REDIS_URL"].startswith(f"redis://{name}:")  # its ACL user
        assert env["STANZAD_REDIS_URL"].endswith("@redis:6379/0")


def test_redis_keeps_its_data(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/data")
               for v in redis["volumes"])


def test_only_client_and_s2s_ports_are_published_beyond_loopback(compose: dict[str, Any]) -> None:
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


def test_the_nats_config_is_generated_from_the_permissions(root: Path) -> None:
    """ops/nats/nats.conf is what `python -m devtools.natsconf` writes: the users and
    permissions of shared/bus/permissions.py, no password in the file."""
    assert (root / "ops/nats/nats.conf").read_text() == natsconf.env_config()
    for role in permissions.ROLES:
        assert f'"user": "{role}"' in natsconf.env_config()


@pytest.mark.parametrize("overrides", [{}, {"STANZAD_NATS_PASSWORD_ROUTER": "x" * 24,
                                            "STANZAD_NATS_PASSWORD_ADMIN": "y" * 24}])
def test_each_service_logs_in_to_nats_as_its_role(
    compose: dict[str, Any], overrides: dict[str, str]
) -> None:
    """docs/operations.md "NATS authentication": each service's STANZAD_NATS_USER is its
    role, and its STANZAD_NATS_PASSWORD is the one the NATS container gives that role, with
    the dev defaults and with passwords set by the operator."""
    env = REQUIRED | overrides
    nats_env = environment(compose["services"]["nats"], env)
    assert set(nats_env) == {natsconf.password_variable(r) for r in permissions.ROLES}
    assert len(set(nats_env.values())) == len(nats_env), "two roles share a password"
    for name, role in NATS_ROLES.items():
        svc_env = environment(compose["services"][name], env)
        assert svc_env["STANZAD_NATS_USER"] == role, name
        assert svc_env["STANZAD_NATS_PASSWORD"] == nats_env[natsconf.password_variable(role)]
    assert environment(compose["services"]["router"], env)["STANZAD_NATS_PASSWORD"] == (
        overrides.get("STANZAD_NATS_PASSWORD_ROUTER", "dev-nats-router"))


def test_nats_server_accepts_the_config_with_the_compose_environment(
    compose: dict[str, Any], root: Path, tmp_path: Path
) -> None:
    nats = compose["services"]["nats"]
    command = nats["command"]
    mount = next(v for v in nats["volumes"] if v.startswith("./ops/nats/"))
    source, target = mount.split(":")[:2]
    assert command[command.index("--config") + 1] == target
    test = [localservers.nats_server_path(), "-c", str(root / source), "-t"]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("NATS_PASSWORD_")}
    ok = subprocess.run(test, env=bare | environment(nats, REQUIRED), capture_output=True,
                        text=True, timeout=30, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # without a password nats-server refuses to start rather than let a user in with none
    missing = subprocess.run(test, env=bare, capture_output=True, text=True, timeout=30,
                             cwd=tmp_path)
    assert missing.returncode != 0
    assert "NATS_PASSWORD_" in missing.stdout + missing.stderr


def test_redis_has_its_default_user_off_and_one_user_per_role(compose: dict[str, Any]) -> None:
    """docs/operations.md "Redis ACL users", as in k8s/deps/redis.yaml: the users of
    shared/store/acl.py, each service logging in as its own with the password the Redis
    container gives it."""
    for env in (REQUIRED, REQUIRED | {"STANZAD_REDIS_PASSWORD_ROUTER": "r" * 24}):
        redis = compose["services"]["redis"]
        command = [interpolate(a, env) for a in redis["command"]]
        assert command[:7] == ["redis-server", "--appendonly", "yes", "--appendfsync",
                               "everysec", "--save", ""]
        passwords = {}
        for role in acl.ROLES:
            i = command.index(role)
            assert command[i - 1] == "--user" and command[i + 1: i + 3] == ["reset", "on"]
            passwords[role] = command[i + 3].removeprefix(">")
        assert command[7:] == acl.arguments(passwords)
        assert len(set(passwords.values())) == len(passwords), "two roles share a password"
        assert environment(redis, env)["REDISCLI_AUTH"] == passwords["admin"]
        assert "redis-cli --user admin ping | grep -qx PONG" in redis["healthcheck"]["test"][1]
        for name in STANZAD:
            url = environment(compose["services"][name], env)["STANZAD_REDIS_URL"]
            assert url == f"redis://{name}:{passwords[name]}@redis:6379/0", name
        assert passwords["router"] == env.get("STANZAD_REDIS_PASSWORD_ROUTER",
                                              "dev-redis-router")


def test_each_service_gets_valid_settings(compose: dict[str, Any]) -> None:
    """Every STANZAD_* variable a container gets is a setting of its service, with a valid
    value (loaded by the service's own settings class)."""
    for name, cls in SETTINGS.items():
        env = environment(compose["services"][name], REQUIRED)
        fields = {f"STANZAD_{field.upper()}": field for field in cls.model_fields}
        unknown = set(env) - set(fields)
        assert unknown == set(), f"{name}: not settings: {unknown}"
        try:
            settings = cls(**{fields[k]: v for k, v in env.items()})  # type: ignore[arg-type]
        except ValidationError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        assert settings.nats_password.get_secret_value()  # type: ignore[attr-defined]

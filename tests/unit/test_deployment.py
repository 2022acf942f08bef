"""The deployment files (Dockerfile, docker-compose.yaml, Prometheus config, CI workflow) agree with the code.

No Docker engine runs here, so these tests read the files: every promise the README makes about them is checked
against the settings model, the service list and the metrics port each service really binds.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from smolit.infra.settings import Settings
from smolit.services import METRICS_PORT_SETTING, SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES_CFG: dict[str, dict[str, Any]] = COMPOSE["services"]
PREFIX = Settings.model_config["env_prefix"]
SETTING_NAMES = {PREFIX + name.upper(): name for name in Settings.model_fields}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _smolit_service(cfg: dict[str, Any]) -> str | None:
    """The Smolit service a container runs (`command: [run, SERVICE]`), if any."""
    command = cfg.get("command") or []
    return command[1] if len(command) == 2 and command[0] == "run" else None


def _one_shot(name: str) -> bool:
    """A job others wait for to finish (e.g. `init`), not a long-running service."""
    return any(
        (dep := cfg.get("depends_on", {}).get(name)) and dep.get("condition") == "service_completed_successfully"
        for cfg in SERVICES_CFG.values()
    )


def _settings(env: dict[str, Any]) -> Settings:
    """The settings a container gets from its SMOLIT_* environment (validated like at start-up)."""
    return Settings(**{SETTING_NAMES[k]: v for k, v in env.items() if k.startswith(PREFIX)})


RUNNING = {name: svc for name, cfg in SERVICES_CFG.items() if (svc := _smolit_service(cfg))}


def _schema_errors(schema: str, instance: Any) -> list[str]:
    validator = jsonschema_rs.validator_for(json.loads((ROOT / "tests" / "fixtures" / "schemas" / schema).read_text()))
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_compose_file_follows_the_compose_specification() -> None:
    """The file validates against the Compose Specification schema (what `docker compose config` checks first)."""
    assert _schema_errors("compose-spec.json", COMPOSE) == []


def test_images_are_pinned() -> None:
    """Every image names a version tag or a digest, never `latest`; Smolit's own tag is the package version."""
    for name, cfg in SERVICES_CFG.items():
        image = cfg["image"]
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image.split("/")[-1]), f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
        if cfg.get("build"):
            assert image == f"smolit:{VERSION}", f"{name}: build tagged {image}, package version is {VERSION}"


def test_every_service_has_a_healthcheck() -> None:
    """Long-running services declare a probe; one-shot jobs are awaited by completion instead."""
    for name, cfg in SERVICES_CFG.items():
        if _one_shot(name):
            assert cfg.get("restart") == "no", f"{name} is a one-shot job and must not restart"
            continue
        test = cfg.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name} has no healthcheck"


def test_depends_on_uses_conditions() -> None:
    """Every dependency waits on a condition (healthy, started or completed) of a service that exists."""
    allowed = {"service_healthy", "service_started", "service_completed_successfully"}
    for name, cfg in SERVICES_CFG.items():
        depends = cfg.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on is a list without conditions"
        for dep, spec in depends.items():
            assert dep in SERVICES_CFG, f"{name} depends on unknown {dep}"
            assert spec.get("condition") in allowed, f"{name} -> {dep}: {spec}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES_CFG[dep], f"{name} waits for {dep} to be healthy; it has no probe"


def test_smolit_env_names_are_settings() -> None:
    """Every SMOLIT_* variable (compose and Dockerfile) is a field of the settings model, and every value parses."""
    dockerfile_env = set(re.findall(r"\b(SMOLIT_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()))
    names = set(dockerfile_env)
    for name, cfg in SERVICES_CFG.items():
        env = cfg.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a list cannot be checked"
        names |= {k for k in env if k.startswith(PREFIX)}
        if any(k.startswith(PREFIX) for k in env):
            _settings(env)  # raises on a value the model rejects
    unknown = names - SETTING_NAMES.keys()
    assert not unknown, f"not settings: {sorted(unknown)}"
    assert len(names) >= 10


def test_every_smolit_service_runs_wired_to_the_real_infrastructure() -> None:
    """One container per service, each on Kafka and Postgres by setting, started only after `init` succeeded."""
    assert sorted(RUNNING.values()) == sorted(SERVICES)
    for name, service in RUNNING.items():
        cfg = SERVICES_CFG[name]
        settings = _settings(cfg["environment"])
        assert settings.kafka_bootstrap and settings.database_url and not settings.tansu_profile, name
        assert cfg["depends_on"]["init"]["condition"] == "service_completed_successfully", name
        assert cfg["healthcheck"]["test"] == ["CMD", "smolit", "health", service], name
    agents = next(cfg for name, cfg in SERVICES_CFG.items() if RUNNING.get(name) == "agents")
    partitions = _settings(agents["environment"]).topic_partitions
    assert 2 <= agents["deploy"]["replicas"] <= partitions  # more members than partitions would idle
    learners = [cfg for name, cfg in SERVICES_CFG.items() if RUNNING.get(name) == "learner"]
    assert [cfg.get("deploy", {}).get("replicas", 1) for cfg in learners] == [1]


def test_volumes_persist_broker_and_database_data() -> None:
    """Kafka's log dirs, Postgres's data dir and MLflow's store sit on named volumes declared at the top level."""
    declared = set(COMPOSE["volumes"])

    def named_mounts(service: str) -> dict[str, str]:
        mounts = {}
        for volume in SERVICES_CFG[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith(("./", "/")):
                assert source in declared, f"{service} mounts undeclared volume {source}"
                mounts[target] = source
        return mounts

    kafka_dirs = SERVICES_CFG["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    assert kafka_dirs in named_mounts("kafka")
    postgres_data = SERVICES_CFG["postgres"]["environment"].get("PGDATA", "/var/lib/postgresql/data")
    assert postgres_data in named_mounts("postgres") or "/var/lib/postgresql" in named_mounts("postgres")
    assert "/mlflow" in named_mounts("mlflow")
    mlflow_args = " ".join(SERVICES_CFG["mlflow"]["command"])
    assert "sqlite:////mlflow/" in mlflow_args and "--artifacts-destination=/mlflow/" in mlflow_args


def test_kafka_runs_in_kraft_mode_without_auto_created_topics() -> None:
    """The broker is its own controller (no ZooKeeper) and only `smolit init` creates topics."""
    env = SERVICES_CFG["kafka"]["environment"]
    assert SERVICES_CFG["kafka"]["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert SERVICES_CFG["postgres"]["image"].startswith("pgvector/pgvector:")


def test_prometheus_scrapes_the_ports_the_services_bind() -> None:
    """Each Smolit container's metrics port (from its settings, never 0 = random) is a Prometheus target."""
    scrape = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets: set[tuple[str, int]] = set()
    for job in scrape["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {(name, sd["port"]) for name in sd["names"]}
        for group in job.get("static_configs", []):
            targets |= {(t.split(":")[0], int(t.split(":")[1])) for t in group["targets"]}
    expected = set()
    for name, service in RUNNING.items():
        port = getattr(_settings(SERVICES_CFG[name]["environment"]), METRICS_PORT_SETTING[service])  # type: ignore[index]
        assert port, f"{name}: metrics port 0 is random and cannot be scraped"
        expected.add((name, port))
    assert targets == expected


def test_compose_mounts_files_that_exist() -> None:
    """Bind mounts (Prometheus config, Grafana provisioning and dashboards) point at files in the repository."""
    mounted = 0
    for name, cfg in SERVICES_CFG.items():
        for volume in cfg.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounted += 1
    assert mounted >= 3


# ---- Dockerfile -----------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for row in _instructions():
        if row[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(row)
    return stages


def test_dockerfile_is_multi_stage_with_cpu_torch_first() -> None:
    """A builder stage installs CPU torch before the project; the final stage copies only the built venv."""
    stages = _stages()
    assert len(stages) >= 2
    builder = stages[0]
    assert re.search(r"\bAS builder$", builder[0][1], re.IGNORECASE)
    runs = [args for word, args in builder if word == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install \.(\s|$)", r))
    assert torch < project and "whl/cpu" in runs[torch]
    final = stages[-1]
    assert any(word == "COPY" and args.startswith("--from=builder") for word, args in final)
    assert not any(word == "RUN" and "pip install" in args for word, args in final)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base and re.search(r":3\.11\.\d+", base.group(1)), "base image is not pinned to a patch release"


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    """The final stage switches to a non-root user, probes health and starts `smolit` by default."""
    final = _stages()[-1]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    words = [word for word, _ in final]
    assert words.index("USER") < words.index("ENTRYPOINT")
    health = next(args for word, args in final if word == "HEALTHCHECK")
    assert "smolit" in health and "health" in health
    assert dict(final)["ENTRYPOINT"] == '["smolit"]'
    # The model is built into the image (no download or build at container start).
    assert any(word == "RUN" and "OnnxMiniLMEmbedder" in args for word, args in final)
    # OpenCV (OCR ingest step) loads libGL.so.1 and glib at import; the slim base image has neither.
    assert any(word == "RUN" and "libgl1" in args and "libglib2.0-0" in args for word, args in final)


# ---- CI workflow ------------------------------------------------------------------------------------------------

# PyYAML reads the key `on` as the YAML 1.1 boolean true; GitHub (and the schema) mean the string.
WORKFLOW: dict[str, Any] = {
    "on" if k is True else k: v
    for k, v in yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text()).items()
}


def test_workflow_defaults_to_no_permissions_and_cancels_superseded_runs() -> None:
    """Top-level `permissions: {}`; a newer push to the same ref cancels the running workflow."""
    assert WORKFLOW["permissions"] == {}
    assert WORKFLOW["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in WORKFLOW["concurrency"]["group"]


def test_workflow_follows_the_github_actions_schema() -> None:
    """The workflow validates against SchemaStore's GitHub workflow schema."""
    assert _schema_errors("github-workflows.json", WORKFLOW) == []


@pytest.mark.parametrize("job", sorted(WORKFLOW["jobs"]))
def test_every_workflow_job_has_a_timeout_and_pinned_actions(job: str) -> None:
    """Each job ends in bounded time, reads the repository at most, and uses actions pinned to a commit."""
    cfg = WORKFLOW["jobs"][job]
    assert 0 < cfg["timeout-minutes"] <= 90
    assert cfg.get("permissions", {}) in ({}, {"contents": "read"})
    for step in cfg["steps"]:
        if "uses" in step:
            assert re.search(r"@[0-9a-f]{40}$", step["uses"]), f"{job}: {step['uses']} is not pinned to a commit"


def test_workflow_covers_the_checks_the_issue_asks_for() -> None:
    """Lint, import layers, types, the embedded test suite, real Kafka + pgvector, and the image build."""
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    for needle in ("ruff check", "ruff format --check", "lint-imports", "mypy", "docker build", "-m real_kafka"):
        assert needle in text, needle
    images = {
        svc["image"].split(":")[0] for job in WORKFLOW["jobs"].values() for svc in job.get("services", {}).values()
    }
    assert {"apache/kafka", "pgvector/pgvector"} <= images

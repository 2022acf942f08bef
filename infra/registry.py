"""MLflow adapter: training runs, the model registry and its aliases (`champion`, `challenger`, `previous`).

Models are stored as one torch payload file (`model.pt`, tensors and plain values only, loaded with
`weights_only=True`) in the run's artifacts and registered as a model version pointing at them. MLflow 3's
`register_model` wants a logged-model flavour; a version created from the artifact folder skips the 2-9 s of
`mlflow.pytorch.log_model` and never unpickles code.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
PAYLOAD = "model.pt"


class RegistryError(RuntimeError):
    """The model registry could not do what was asked (unknown version or alias, store unreachable)."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str | None
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    created_ms: int


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    tags: dict[str, str]
    aliases: dict[str, str]
    versions: list[ModelVersion]

    @property
    def latest(self) -> ModelVersion | None:
        return self.versions[-1] if self.versions else None


class ModelRegistry:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None, experiment: str = "smolit-router"):
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        self.tracking_uri = tracking_uri
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is not None:
            self.experiment_id = existing.experiment_id
        else:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> str:
        """A parent run (e.g. a hyper-parameter search) that child runs point to; finish it with `end_run`."""
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {}).info.run_id

    def end_run(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def log_run(
        self,
        params: dict[str, Any],
        metrics: dict[str, float],
        *,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        payload: dict[str, Any] | None = None,
        texts: dict[str, str] | None = None,
    ) -> str:
        """One finished run with params, metrics, (optionally) the model file and text artifacts; returns its id."""
        import torch

        tags = dict(tags or {})
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = self.start_run(run_name or "run", tags)
        try:
            for key, value in params.items():
                self.client.log_param(run_id, key, value)
            for key, value in metrics.items():
                self.client.log_metric(run_id, key, float(value))
            if payload is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    torch.save(payload, Path(tmp) / PAYLOAD)
                    self.client.log_artifacts(run_id, tmp, artifact_path="model")
            for name, text in (texts or {}).items():
                self.client.log_text(run_id, text, name)
        except Exception:
            self.end_run(run_id, failed=True)
            raise
        self.end_run(run_id)
        return run_id

    def log_version(
        self,
        name: str,
        payload: dict[str, Any],
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> ModelVersion:
        """One training run (params, metrics, the model file) registered as a new version of `name`."""
        run_id = self.log_run(
            params, metrics, tags=tags, run_name=run_name, parent_run_id=parent_run_id, payload=payload
        )
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name)
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        version = self.client.create_model_version(name, source=f"{artifact_uri}/model", run_id=run_id, tags=tags or {})
        return self._describe(version)

    def register_shipped(
        self,
        name: str,
        source: Path,
        *,
        digest: str,
        tags: dict[str, str],
        params: dict[str, Any],
        version_tags: dict[str, str] | None = None,
    ) -> ModelVersion:
        """A model shipped in a package (not trained here) as a version of `name`, once per content `digest`.

        The version points at the installed files (no copy); a run records `params`; `tags` (task_type,
        input_format, domain, ...) go on the registered model and the version, `version_tags` (e.g. the OCR
        configuration the version runs) on the version only. The first version becomes champion.
        """
        found = self.client.search_model_versions(filter_string=f"name = '{name}' and tags.digest = '{digest}'")
        if found:
            return self._describe(found[0])
        run_id = self.start_run(f"{name} (shipped)", tags | {"digest": digest})  # log_run would import torch
        for key, value in params.items():
            self.client.log_param(run_id, key, value)
        self.end_run(run_id)
        if not self.client.search_registered_models(filter_string=f"name = '{name}'"):
            self.client.create_registered_model(name, tags=tags)
        for key, value in tags.items():
            self.client.set_registered_model_tag(name, key, value)
        version = self.client.create_model_version(
            name, source=source.resolve().as_uri(), run_id=run_id, tags=tags | (version_tags or {}) | {"digest": digest}
        )
        if self.version_for(name, CHAMPION) is None:
            self.set_alias(name, CHAMPION, str(version.version))
        return self._describe(version)

    def tag_model(self, name: str, tags: dict[str, str]) -> None:
        """Tags on the registered model (task_type, input_format, domain: what `smolit models list` shows)."""
        for key, value in tags.items():
            self.client.set_registered_model_tag(name, key, value)

    def log_metrics(self, name: str, version: str, metrics: dict[str, float]) -> None:
        """Measured metrics of a version (e.g. from `smolit bench pipelines`), on the run behind it."""
        run_id = self.client.get_model_version(name, version).run_id
        if run_id is None:
            raise RegistryError(f"model {name} version {version} has no run to record metrics on")
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def models(self) -> list[RegisteredModel]:
        """Every registered model with its tags, versions and aliases (alias -> version)."""
        found = self.client.search_registered_models(order_by=["name ASC"])
        return [
            RegisteredModel(
                name=m.name,
                tags=dict(m.tags or {}),
                aliases={str(k): str(v) for k, v in (m.aliases or {}).items()},
                versions=self.versions(m.name),
            )
            for m in found
        ]

    def model_tags(self) -> dict[str, dict[str, str]]:
        """Registered model name -> its tags (the model manager resolves (task type, domain) with them)."""
        return {m.name: dict(m.tags or {}) for m in self.client.search_registered_models()}

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        """Tags of one version (e.g. `variant`: the OCR configuration it runs). Raises RegistryError."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_model_version(name, version).tags or {})
        except MlflowException as exc:
            raise RegistryError(f"model {name} version {version} is not in the registry: {exc.message}") from exc

    def runs_tagged(self, tags: dict[str, str]) -> list[str]:
        """Ids of this experiment's runs carrying all of `tags` (newest first)."""
        terms = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=terms, order_by=["attributes.start_time DESC"]
        )
        return [r.info.run_id for r in runs]

    def read_text(self, run_id: str, path: str) -> str:
        """A text artifact of a run."""
        folder = self._mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, tracking_uri=self.tracking_uri
        )
        return Path(folder).read_text(encoding="utf-8")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def version_for(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def load(self, name: str, version: str) -> dict[str, Any]:
        import torch
        from mlflow.exceptions import MlflowException

        try:
            source = self.client.get_model_version(name, version).source
            folder = self._mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
        except MlflowException as exc:
            raise RegistryError(f"model {name} version {version} is not in the registry: {exc.message}") from exc
        return torch.load(Path(folder) / PAYLOAD, weights_only=True)

    def versions(self, name: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(filter_string=f"name = '{name}'")
        return sorted((self._describe(v) for v in found), key=lambda v: int(v.version))

    def _describe(self, version: Any) -> ModelVersion:
        full = self.client.get_model_version(version.name, version.version)
        metrics = self.client.get_run(full.run_id).data.metrics if full.run_id else {}
        return ModelVersion(
            name=full.name,
            version=str(full.version),
            run_id=full.run_id,
            aliases=tuple(sorted(full.aliases)),
            metrics=dict(metrics),
            created_ms=int(full.creation_timestamp),
        )


def open_registry(tracking_uri: str, data_dir: Path, experiment: str = "smolit-router") -> ModelRegistry:
    """The registry named by the settings; a local sqlite store keeps its artifacts beside it in data_dir.

    Opening a new sqlite store runs MLflow's schema migrations; two services opening it at once race on them
    (alembic "0 found" errors), so openers of a local store take turns on a file lock.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return ModelRegistry(tracking_uri, None, experiment)
    import fcntl

    folder = data_dir / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".open.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return ModelRegistry(tracking_uri, folder / "artifacts", experiment)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

"""Training from a whole log at once: from-scratch training, its evaluation, and Optuna hyper-parameter search."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from smolit.contracts import TrainingExample
from smolit.router.features import AgentFeatures

from .dataset import in_holdout, outcome_of
from .evaluation import Evaluation
from .trainer import Outcome, Posterior, Trainer, new_trainer


@dataclass(frozen=True)
class TrainParams:
    lr: float = 1e-2
    hidden: int = 0
    weight_decay: float = 1e-4
    epochs: int = 5
    batch_size: int = 64
    refit_iterations: int = 100
    refit_l2: float = 1e-4


@dataclass(frozen=True)
class OfflineResult:
    trainer: Trainer
    evaluation: Evaluation
    params: TrainParams
    train_examples: int
    train_s: float
    posterior: Posterior | None = None
    """Posterior variances of the fitted model (`Trainer.posterior_variances`), for Thompson sampling."""


def split(examples: Sequence[TrainingExample], holdout_share: float, seed: int) -> tuple[list[Outcome], list[Outcome]]:
    """Training and holdout outcomes; membership by event id, as in the live learner."""
    train, holdout = [], []
    for example in examples:
        (holdout if in_holdout(example.event_id, holdout_share, seed) else train).append(outcome_of(example))
    return train, holdout


def train_offline(
    features: AgentFeatures, train: Sequence[Outcome], holdout: Sequence[Outcome], params: TrainParams, seed: int
) -> OfflineResult:
    """A fresh network trained for `params.epochs` passes over `train`, then fitted in full batch on all of it as the
    live learner fits its candidates (`Trainer.refit`); seeded: the same data, the same model."""
    started = time.perf_counter()
    trainer = new_trainer(
        features,
        features.prototypes.shape[1],
        hidden=params.hidden,
        seed=seed,
        lr=params.lr,
        weight_decay=params.weight_decay,
        batch_size=params.batch_size,
        buffer_size=max(len(train), 1),
    )
    used = trainer.add(train)
    posterior = None
    if used:
        trainer.train(params.epochs * math.ceil(used / params.batch_size))
        fitted = trainer.refit(used, params.refit_iterations, params.refit_l2)
        posterior = trainer.posterior_variances(fitted, list(trainer.buffer), params.refit_l2)
        trainer = Trainer(fitted, features, seed=seed)
    elapsed = time.perf_counter() - started
    return OfflineResult(trainer, trainer.evaluate(holdout), params, used, elapsed, posterior)


def search(
    features: AgentFeatures,
    train: Sequence[Outcome],
    holdout: Sequence[Outcome],
    trials: int,
    seed: int,
    on_trial: Callable[[int, OfflineResult], None] = lambda *_: None,
) -> OfflineResult:
    """Optuna TPE search (seeded) maximising holdout accuracy, ties broken by lower log-loss; the best result."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[int, OfflineResult] = {}

    def objective(trial: optuna.Trial) -> float:
        params = TrainParams(
            lr=trial.suggest_float("lr", 1e-3, 3e-2, log=True),
            hidden=trial.suggest_categorical("hidden", [0, 64, 256]),
            weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            epochs=trial.suggest_int("epochs", 2, 10),
        )
        result = train_offline(features, train, holdout, params, seed)
        results[trial.number] = result
        on_trial(trial.number, result)
        accuracy = result.evaluation.accuracy or 0.0
        return accuracy - 1e-3 * (result.evaluation.log_loss or 0.0)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return results[study.best_trial.number]


def params_dict(params: TrainParams) -> dict[str, float | int]:
    return asdict(params)

"""`smolit run SERVICE --instances N`: N processes of one service, all members of that service's consumer group.

The supervisor checks the settings once (the same start-up checks every instance makes), starts N
`python -m smolit run SERVICE` children on its own stdout/stderr, and stops all of them on SIGINT/SIGTERM or as
soon as one exits. Partitions bound the useful N: a group never gives one partition to two members, so instances
beyond `SMOLIT_TOPIC_PARTITIONS` idle as standbys.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from smolit.infra.embedded import Child, spawn, terminate
from smolit.infra.settings import Settings

from .errors import SetupError
from .services import METRICS_PORT_SETTING, Service, connect

_NOT_SCALED = {
    "gateway": (
        "the gateway listens on one HTTP port: run one `smolit run gateway` per container or port, each with its own"
        " SMOLIT_PORT and SMOLIT_GATEWAY_INSTANCE, behind a load balancer"
    ),
    "learner": (
        "the learner owns one model: a second member would train on half of the examples and promote its own"
        " candidates; run exactly one learner"
    ),
}


def instance_env(service: Service, settings: Settings, index: int) -> dict[str, str]:
    """Environment of instance `index`: the caller's, with a distinct metrics port (P+index) when P is fixed."""
    env = dict(os.environ)
    field = METRICS_PORT_SETTING[service]
    base: int = getattr(settings, field)
    if base:
        env[f"SMOLIT_{field.upper()}"] = str(base + index)
    return env


def run_instances(service: Service, settings: Settings, instances: int) -> None:
    """Run `instances` processes of `service` until SIGINT/SIGTERM; raises SetupError if one of them exits."""
    if service in _NOT_SCALED:
        raise SetupError(f"`smolit run {service} --instances {instances}` is not supported: {_NOT_SCALED[service]}")
    _, pool = connect(settings, service)  # fail once, clearly, before N children fail the same way
    pool.close()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    children: list[Child] = []
    try:
        for index in range(instances):
            # Children get their own session (a terminal Ctrl-C reaches only this supervisor, which stops them in
            # order) and a parent-death signal (they never outlive it, even after kill -9).
            children.append(
                spawn(
                    f"{service}-{index}",
                    [sys.executable, "-m", "smolit", "run", service],
                    None,
                    env=instance_env(service, settings, index),
                )
            )
        while not stop.wait(0.5):
            for child in children:
                if not child.running():
                    raise SetupError(
                        f"{child.name} (pid {child.pid}) exited with code {child.proc.returncode};"
                        f" stopped the other {service} instances"
                    )
    finally:
        for child in children:  # signal all first so they drain and commit in parallel
            if child.running():
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            terminate(child, 20)

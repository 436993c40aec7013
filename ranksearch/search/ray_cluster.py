"""The Ray cluster a search runs on: a private local one or an existing one joined by address,
and the checks that fail in seconds where Ray would wait or retry for minutes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import ray

from .. import config as cfg

__all__ = ["ray_cluster", "check_reachable", "local_resources", "check_fits", "default_gpus"]


@contextlib.contextmanager
def ray_cluster(address: str | None, progress: bool) -> Iterator[None]:
    """Connect to the cluster at ``address``, or start a private local one; disconnect at
    the end whatever happens, which stops a local cluster and every worker it started."""
    if ray.is_initialized():  # the caller's own Ray session (Python API): theirs to stop
        yield
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=progress, logging_level=logging.WARNING)
        else:
            local = local_resources()
            ray.init(address="local", num_cpus=int(local["CPU"]), num_gpus=int(local["GPU"]),
                     include_dashboard=False, log_to_driver=progress,
                     logging_level=logging.WARNING)
    except (ConnectionError, ValueError) as err:  # ValueError: Ray refuses the address
        ray.shutdown()
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no answer"
        hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token here too"
                if isinstance(err, ConnectionError) else "")
        raise cfg.ConfigError(f"cannot join the Ray cluster at {address} ({reason}{hint})",
                              argument="address") from None
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """Fail in seconds when nothing listens at a ``HOST:PORT`` address, or at the one
    ``auto`` stands for: ``ray.init`` would retry for minutes."""
    named = address
    if address == "auto":
        address = _auto_address()
        if address is None:
            return  # no cluster recorded: ray.init says so at once
        named = f"auto ({address})"
    elif "://" in address:
        return  # "ray://HOST:PORT" is Ray Client, which Ray checks itself
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise cfg.ConfigError(f"expected HOST:PORT (the head node's GCS port, 6379 by default), "
                              f"ray://HOST:PORT or auto, got {address!r}", argument="address")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise cfg.ConfigError(f"no Ray cluster answers at {named} ({err.strerror or err})",
                              argument="address") from None


def _auto_address() -> str | None:
    """The ``HOST:PORT`` that ``--address auto`` stands for, as Ray resolves it: RAY_ADDRESS,
    else the cluster last started on this host (a file Ray leaves behind, also once that
    cluster is gone); None where neither names one."""
    try:
        # Ray's own resolver; it has no public one.
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - a Ray without it, or an address it refuses: ray.init reports
        return None


def local_resources() -> dict[str, float]:
    """What the private local cluster gets: every CPU and every visible GPU of this host."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_fits(cpus: float, gpus: float) -> None:
    """Fail when a trial asks for more than the private local cluster has
    (:func:`local_resources`): Tune would wait forever."""
    have = local_resources()
    for argument, asked, name in (("cpus_per_trial", cpus, "CPU"),
                                  ("gpus_per_trial", gpus, "GPU")):
        if asked > have.get(name, 0):
            raise cfg.ConfigError(f"{asked:g} asked; this host has {have.get(name, 0):g} "
                                  f"{name}s for Ray", argument=argument)


def default_gpus(config: cfg.StudyConfig) -> float:
    """One GPU per trial when the cluster has GPUs and the config may use them."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    return 1.0 if has_gpus and config.device != "cpu" else 0.0

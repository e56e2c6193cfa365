"""Virt drivers are plugins: entry points in ``attachworker.virt.drivers``."""
from importlib import metadata

from oslo_config import cfg
from stevedore import driver as sv_driver
from stevedore import exception as sv_exception

from attachworker import exception
from attachworker.virt.driver import VirtDriver

NAMESPACE = 'attachworker.virt.drivers'

__all__ = ['NAMESPACE', 'VirtDriver', 'installed_drivers', 'load_driver']


def installed_drivers() -> list[str]:
    """Names of the installed drivers, e.g. ``['fake']``, without importing them."""
    return sorted({ep.name for ep in metadata.entry_points(group=NAMESPACE)})


def _load_failed(manager, entrypoint, exc: Exception) -> None:
    # stevedore's default swallows the error and then reports "no driver found",
    # which would hide a broken driver (bad state file, missing library) behind
    # VirtDriverNotFound. Surface the real cause instead.
    if isinstance(exc, exception.AttachWorkerException):
        raise exc
    raise exception.VirtDriverError(
        reason='driver %s failed to load: %s' % (entrypoint.name, exc)) from exc


def load_driver(conf: cfg.ConfigOpts) -> VirtDriver:
    """The driver named by ``[virt] driver``, constructed with ``conf``."""
    name = conf.virt.driver
    try:
        manager = sv_driver.DriverManager(
            namespace=NAMESPACE, name=name, invoke_on_load=True, invoke_args=(conf,),
            on_load_failure_callback=_load_failed)
    except sv_exception.NoMatches as exc:
        raise exception.VirtDriverNotFound(
            name=name, available=', '.join(installed_drivers()) or 'none') from exc
    return manager.driver

"""Client side of the compute RPC API: what a controller imports to cast.

API version history:

* 1.0 - Initial version: ``attach_volume`` (cast).
* 1.1 - Adds ``detach_volume`` (cast).
* 1.2 - Adds ``reserve_block_device_name`` (call).
* 1.3 - Adds ``extend_volume`` (cast).

Bump the minor version for every additive change, keep this history, and make the
new argument conditional on ``can_send_version`` so that ``[upgrade_levels]
compute`` can hold the version down while older workers remain.
"""
from typing import Any
from typing import Optional

from oslo_config import cfg
import oslo_messaging as messaging

from attachworker import rpc

RPC_API_VERSION = '1.3'
#: Seconds a call waits for the worker's answer before MessagingTimeout.
CALL_TIMEOUT = 60


class ComputeAPI:
    """Casts to the ``compute`` topic of one host.

    Everything is passed in: the ConfigOpts (for ``[upgrade_levels] compute``) and
    the transport (``attachworker.rpc.get_rpc_transport(conf)``).
    """

    def __init__(self, conf: cfg.ConfigOpts, transport: messaging.Transport,
                 retry: Optional[int] = None) -> None:
        """``retry``: connection attempts before a cast fails with
        MessageDeliveryFailure (None: forever, as a service wants; a CLI wants a few).
        """
        cap = conf.upgrade_levels.compute or RPC_API_VERSION
        target = messaging.Target(topic=rpc.TOPIC, version=RPC_API_VERSION)
        self.client = messaging.get_rpc_client(
            transport, target, version_cap=cap, serializer=rpc.RequestContextSerializer(),
            retry=retry)

    def _prepare(self, host: str, version: str, **kwargs: Any) -> Any:
        """The client context for ``host`` at ``version``; RPCVersionCapError (nothing
        is sent) when ``[upgrade_levels] compute`` holds the version below it."""
        if not self.client.can_send_version(version):
            raise messaging.RPCVersionCapError(version=version,
                                               version_cap=self.client.version_cap)
        return self.client.prepare(server=host, version=version, **kwargs)

    def attach_volume(self, ctxt: Any, host: str, instance: dict, volume_id: str,
                      mountpoint: Optional[str] = None, mode: str = 'rw',
                      attachment_id: Optional[str] = None) -> None:
        """Cast an attach to ``host``; the outcome arrives as a notification."""
        self._prepare(host, '1.0').cast(ctxt, 'attach_volume', instance=instance,
                                        volume_id=volume_id, mountpoint=mountpoint,
                                        mode=mode, attachment_id=attachment_id)

    def detach_volume(self, ctxt: Any, host: str, instance: dict, volume_id: str,
                      attachment_id: Optional[str] = None) -> None:
        """Cast a detach to ``host`` (needs 1.1); the outcome arrives as a notification."""
        self._prepare(host, '1.1').cast(ctxt, 'detach_volume', instance=instance,
                                        volume_id=volume_id, attachment_id=attachment_id)

    def reserve_block_device_name(self, ctxt: Any, host: str, instance: dict,
                                  volume_id: str, device: Optional[str] = None,
                                  tag: Optional[str] = None, multiattach: bool = False,
                                  timeout: float = CALL_TIMEOUT) -> str:
        """Call (needs 1.2): the device name the next attach of the volume to the
        instance will use. A refusal raises oslo.messaging's RemoteError, whose
        ``exc_type`` names it (``VolumeAlreadyAttached``, ``DeviceInUse``,
        ``MultiattachNotSupported``, ``InvalidInput``), or the exception itself when
        ``attachworker.exception`` is in the transport's ``allowed_remote_exmods``."""
        return self._prepare(host, '1.2', timeout=timeout).call(
            ctxt, 'reserve_block_device_name', instance=instance, volume_id=volume_id,
            device=device, tag=tag, multiattach=multiattach)

    def extend_volume(self, ctxt: Any, host: str, instance: dict, volume_id: str,
                      new_size: Optional[int] = None) -> None:
        """Cast (needs 1.3) what Nova does on Cinder's ``volume-extended`` event: the
        host grows the volume's disk in the instance to the size Cinder reports.
        ``new_size`` (GiB) is advisory: the worker reads the size from Cinder and
        logs a difference. The outcome arrives as an ``instance.volume_extend``
        notification. A cap below 1.3 raises RPCVersionCapError: nothing is sent."""
        self._prepare(host, '1.3').cast(ctxt, 'extend_volume', instance=instance,
                                        volume_id=volume_id, new_size=new_size)

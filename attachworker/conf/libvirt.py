"""[libvirt]: the libvirt virt driver (``[virt] driver = libvirt``)."""
from oslo_config import cfg

GROUP = 'libvirt'

libvirt_opts = [
    cfg.StrOpt('connection_uri',
               default='qemu:///system',
               help="""
The libvirt connection URI of this host's hypervisor.

The connection is opened on first use and reopened when libvirtd restarts or
the connection drops. Instances are the domains of this connection whose
UUID is the instance UUID.

Possible values:

* ``qemu:///system``: the system QEMU/KVM daemon of this host (the default).
* Any URI libvirt accepts, e.g. ``qemu+tcp://compute-1/system`` or
  ``test:///default``.
"""),
    cfg.StrOpt('rbd_user',
               help="""
The Ceph (RADOS) user QEMU authenticates as for ``rbd`` volumes, instead of
the ``auth_username`` Cinder sends.

As in Nova, this is used only together with ``rbd_secret_uuid``: the libvirt
secret holds the key of one user, so the user and the secret are overridden
together.

Related options:

* ``rbd_secret_uuid``
"""),
    cfg.StrOpt('rbd_secret_uuid',
               help="""
The UUID of the libvirt secret (``virsh secret-list``, usage type ``ceph``)
that holds the Ceph key for ``rbd`` volumes.

When set, it is used for every ``rbd`` volume and authentication is always
enabled, whatever Cinder sends (as Nova does). When unset, the
``secret_uuid`` of Cinder's connection info is used for volumes whose
``auth_enabled`` is true; an authenticated volume with no secret UUID from
either side is refused before the guest is touched. The key itself never
appears in the domain XML or in logs: the operator defines the secret once
with ``virsh secret-define`` and ``virsh secret-set-value --file``.

Related options:

* ``rbd_user``
"""),
    cfg.StrOpt('disk_bus',
               default='scsi',
               choices=[
                   ('scsi', 'virtio-scsi: the guest sees /dev/sdX; unplugging needs no '
                            'cooperation from the guest operating system'),
                   ('virtio', 'virtio-blk: the guest sees /dev/vdX; unplugging needs the '
                              "guest's ACPI hot-plug support, so a guest that ignores the "
                              'request keeps the disk'),
               ],
               help="""
The bus volumes are attached on (the ``bus`` of the disk's ``<target>``).

Device names handed out by ``reserve_block_device_name`` follow the bus:
``/dev/sdb``, ``/dev/sdc``... for ``scsi``; ``/dev/vdb``, ``/dev/vdc``...
for ``virtio``. A device named by the caller is used as the target as it
is (libvirt accepts ``vdb`` on the ``scsi`` bus, but the guest then calls the
disk ``/dev/sdX``). The ``scsi`` bus expects a virtio-scsi controller in the
domain, as Nova's ``hw_scsi_model=virtio-scsi`` gives.
"""),
    cfg.IntOpt('device_detach_attempts',
               default=8,
               min=1,
               help="""
How many times a detach is asked of the running guest before giving up.

After each request the driver waits up to ``device_detach_timeout`` seconds
for libvirt's device-removed event, then reads the domain XML: a disk still
there is asked to detach again. When every attempt is used up the detach
fails and the volume stays attached (Cinder keeps it ``in-use``). A detach
libvirt reports as failed (its device-removal-failed event) is not retried.

Related options:

* ``device_detach_timeout``
"""),
    cfg.IntOpt('device_detach_timeout',
               default=20,
               min=1,
               help="""
Seconds to wait for libvirt's device-removed event after each detach request
to the running guest.

Related options:

* ``device_detach_attempts``
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(libvirt_opts, group=GROUP)


def list_opts():
    return [(GROUP, libvirt_opts)]

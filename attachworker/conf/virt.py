"""[virt]: the virt driver that connects volumes to instances."""
from oslo_config import cfg

GROUP = 'virt'

virt_opts = [
    cfg.StrOpt('driver',
               default='fake',
               help="""
Name of the virt driver, an entry point in ``attachworker.virt.drivers``.

Possible values:

* ``fake``: records attachments in a durable file under ``state_path``; ships with
  attachworker for tests and demonstrations.
* ``libvirt``: attaches volumes as disks of the libvirt domain whose UUID is the
  instance UUID (``rbd`` through QEMU's librbd, ``iscsi`` and ``fibre_channel``
  through os-brick); needs libvirt-python, and os-brick for the block protocols.
  See the ``[libvirt]`` section.
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(virt_opts, group=GROUP)


def list_opts():
    return [(GROUP, virt_opts)]

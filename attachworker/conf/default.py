"""[DEFAULT] options of attachworker.

``transport_url`` and ``control_exchange`` belong to oslo.messaging, ``debug`` and
``log_file`` to oslo.log; they are registered by those libraries. attachworker only
changes the default of ``control_exchange`` (see attachworker.rpc).
"""
import socket

from oslo_config import cfg

default_opts = [
    cfg.StrOpt('host',
               default=socket.gethostname(),
               sample_default='<current_hostname>',
               help="""
Name of this compute host.

This is the RPC server name: a controller casts to topic ``compute`` with
``server=<host>``. It is also the ``host`` the connector sends to Cinder and the
``host`` field of every notification.

Possible values:

* A string unique among the hosts sharing one ``control_exchange``.
"""),
    cfg.StrOpt('state_path',
               default='/var/lib/attachworker',
               help="""
Directory where local durable files live: the fake virt driver's attachment
records, the journal and, by default, the audit SQLite database.
"""),
    cfg.StrOpt('my_block_storage_ip',
               default='127.0.0.1',
               help="""
IP address of this host on the storage network.

Sent to Cinder as the connector's ``ip`` field (os-brick's ``my_ip``).
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(default_opts)


def list_opts():
    return [('DEFAULT', default_opts)]

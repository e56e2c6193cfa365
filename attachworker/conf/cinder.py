"""[cinder]: how the worker reaches the Block Storage API.

Besides the options below, the section holds keystoneauth1's session options
(``cafile``, ``insecure``, ``timeout``, ...; ``timeout`` with a default of ours)
and auth options (``auth_type``, ``auth_url``, ``username``, ...). That auth is
used only for calls made with no caller token (recovery, reconcile, catalog
lookups), never as a fallback when Cinder rejects the caller's token.
"""
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from attachworker.conf import session

GROUP = 'cinder'

#: keystoneauth1's session ``timeout`` has no default: a Cinder that accepts the
#: connection and never answers would hold the call, and the worker thread, forever.
DEFAULT_TIMEOUT = 90.0

TIMEOUT_HELP = """
Seconds to wait for Cinder (and for Keystone, for the ``[cinder]`` auth)
to accept a connection, and then for each read of its answer: not a limit
on the whole request.

The default, 90, is longer than Cinder's own wait for its volume service
(``rpc_response_timeout``, 60 by default) in initialize_connection and
attachment_update, so the worker gets Cinder's answer or error rather than
giving up first. A call that timed out is retried only when it is
idempotent (``http_retries``); any other may have been done, and the
pipeline undoes it.
"""

cinder_opts = [
    cfg.StrOpt('catalog_info',
               default='volumev3::publicURL',
               regex=r'^[\w-]+:[\w-]*:.*$',
               help="""
Where to find Cinder in the service catalog, as
``<service_type>:<service_name>:<interface>``.

Possible values:

* ``volumev3::publicURL`` (default), or ``block-storage:cinderv3:internalURL``...

Related options:

* ``endpoint_template`` overrides the catalog when it is set.
"""),
    cfg.StrOpt('endpoint_template',
               help="""
Override the catalog with this URL template, for example
``http://cinder.example.com:8776/v3/%(project_id)s``. ``%(project_id)s`` is the
caller's project.
"""),
    cfg.StrOpt('os_region_name',
               help='Region of the Cinder endpoint to pick from the catalog.'),
    cfg.IntOpt('http_retries',
               default=3,
               min=0,
               help="""
How many times a Cinder call is retried after a connection failure, and how many
times an idempotent call (GET, DELETE and the undo calls) is retried after an
HTTP 500 or 504. Non-idempotent calls are never retried on an HTTP error.
"""),
    cfg.StrOpt('attach_flow',
               default='auto',
               choices=[('auto', 'attachments when Cinder supports microversion 3.44, '
                                 'else legacy'),
                        ('attachments', 'attachment_create/update/complete (Cinder >= 3.44)'),
                        ('legacy', 'reserve/initialize_connection/attach')],
               help='Which Cinder attach flow the worker uses.'),
    cfg.BoolOpt('cross_az_attach',
                default=True,
                help="""
Allow attaching a volume whose availability zone differs from the instance's.

When false, an attach is refused before any Cinder change if the instance's
``availability_zone`` and the volume's differ.
"""),
]


def session_opts() -> list:
    """keystoneauth1's session options, with our ``timeout`` default."""
    return session.session_opts(DEFAULT_TIMEOUT, TIMEOUT_HELP,
                                'Do not verify the HTTPS certificates of Cinder and Keystone.')


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(cinder_opts, group=GROUP)
    conf.register_opts(session_opts(), group=GROUP)
    ks_loading.register_auth_conf_options(conf, GROUP)


def list_opts():
    return [(GROUP, cinder_opts
             + session_opts()
             + ks_loading.get_auth_common_conf_options()
             + ks_loading.get_auth_plugin_conf_options('password'))]

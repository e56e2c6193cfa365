"""[service_user]: the identity sent as X-Service-Token with the caller's token.

Cinder refuses to delete an attachment that has connection info (the undo of an
attachments-flow attach) without a service token whose user holds the ``service``
role (OSSA-2023-003). Configure a ``nova``-like service user here.

The section's keystoneauth1 session options (``cafile``, ``insecure``, ``timeout``,
...) apply to the service user's Keystone calls; Cinder calls use ``[cinder]``'s.
"""
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from attachworker.conf import session

GROUP = 'service_user'

#: keystoneauth1's session ``timeout`` has no default: a Keystone that accepts the
#: connection and never answers would hold the call, and the worker thread, forever.
DEFAULT_TIMEOUT = 30.0

TIMEOUT_HELP = """
Seconds to wait for Keystone to accept a connection, and then for each
read of its answer, when the service user's token is fetched: not a limit
on the whole request.

The default, 30, is far more than a healthy Keystone takes to issue a
token (well under a second), and shorter than ``[cinder] timeout``: a
Keystone that is down or stuck fails the call as "identity unavailable"
instead of holding the worker thread as long as a slow Cinder call may.
"""

service_user_opts = [
    cfg.BoolOpt('send_service_user_token',
                default=False,
                help="""
Send a service token along with the caller's token on every Cinder call.

Without it Cinder refuses to delete an attachment that has connection info
(OSSA-2023-003): detaching and undoing a failed attach fail.
attachworker-compute warns at start-up when this is false.

Related options:

* the keystoneauth auth options of this section say who the service user is.
"""),
]


def session_opts() -> list:
    """keystoneauth1's session options, with our ``timeout`` default."""
    return session.session_opts(
        DEFAULT_TIMEOUT, TIMEOUT_HELP,
        "Do not verify the HTTPS certificate of the service user's Keystone.")


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(service_user_opts, group=GROUP)
    conf.register_opts(session_opts(), group=GROUP)
    ks_loading.register_auth_conf_options(conf, GROUP)


def list_opts():
    return [(GROUP, service_user_opts
             + session_opts()
             + ks_loading.get_auth_common_conf_options()
             + ks_loading.get_auth_plugin_conf_options('password'))]

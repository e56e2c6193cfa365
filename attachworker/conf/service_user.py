"""[service_user]: the identity sent as X-Service-Token with the caller's token.

Cinder refuses to delete an attachment that has connection info (the undo of an
attachments-flow attach) without a service token whose user holds the ``service``
role (OSSA-2023-003). Configure a ``nova``-like service user here.
"""
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

GROUP = 'service_user'

service_user_opts = [
    cfg.BoolOpt('send_service_user_token',
                default=False,
                help="""
Send a service token along with the caller's token on every Cinder call.

Related options:

* the keystoneauth auth options of this section say who the service user is.
"""),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(service_user_opts, group=GROUP)
    ks_loading.register_session_conf_options(conf, GROUP)
    ks_loading.register_auth_conf_options(conf, GROUP)


def list_opts():
    return [(GROUP, service_user_opts
             + ks_loading.get_session_conf_options()
             + ks_loading.get_auth_common_conf_options()
             + ks_loading.get_auth_plugin_conf_options('password'))]

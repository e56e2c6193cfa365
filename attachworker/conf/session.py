"""keystoneauth1's session options as attachworker registers them, for every section
that has a session (``[cinder]``, ``[service_user]``)."""
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg


def session_opts(timeout: float, timeout_help: str, insecure_help: str) -> list:
    """The session options with a ``timeout`` default (keystoneauth1 has none: a peer
    that accepts the connection and never answers would hold the call forever) and
    help that says what they do here."""
    opts = ks_loading.get_session_conf_options()
    cfg.set_defaults(opts, timeout=timeout)
    for opt in opts:
        if opt.dest == 'timeout':
            opt.help = timeout_help
        elif opt.dest == 'insecure':  # keystoneauth1 says "Verify HTTPS connections."
            opt.help = insecure_help
    return opts

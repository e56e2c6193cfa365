"""The request context carried by RPC casts.

A thin subclass of oslo.context's RequestContext that also carries the caller's
service catalog (filtered to what attachworker needs), as Nova's does, so the
Cinder adapter can find the caller's Cinder endpoint.
"""
from typing import Any
from typing import Optional

from oslo_context import context as o_context

#: What a context keeps when it leaves the process (notifications, the journal).
REDACTED_KEYS = ('request_id', 'global_request_id', 'user_id', 'project_id')
#: Catalog entries kept in a context: Cinder and Keystone, nothing else.
_CATALOG_TYPES = ('volume', 'volumev3', 'block-storage', 'identity')


class RequestContext(o_context.RequestContext):
    def __init__(self, service_catalog: Optional[list] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service_catalog = [entry for entry in (service_catalog or [])
                                if isinstance(entry, dict)
                                and entry.get('type') in _CATALOG_TYPES]

    def to_dict(self) -> dict:
        values = super().to_dict()
        values['service_catalog'] = self.service_catalog
        return values

    @classmethod
    def from_dict(cls, values: dict, **kwargs: Any) -> 'RequestContext':
        kwargs.setdefault('service_catalog', values.get('service_catalog'))
        return super().from_dict(values, **kwargs)

    def redacted(self) -> dict:
        """What may leave the process in a notification: ids only, no token."""
        return {
            'request_id': self.request_id,
            'global_request_id': self.global_id if self.global_request_id else None,
            'user_id': self.user_id,
            'project_id': self.project_id,
        }


def get_admin_context(request_id: Optional[str] = None) -> RequestContext:
    """A context with no caller token: Cinder calls use the [cinder] auth."""
    kwargs = {'is_admin': True, 'overwrite': False}
    if request_id:
        kwargs['request_id'] = request_id
    return RequestContext(**kwargs)

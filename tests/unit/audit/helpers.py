"""Builders and readers shared by the audit unit tests."""
import datetime
import types

from kombu import message as kombu_message
import sqlalchemy as sa

from attachworker.audit import contract
from attachworker.audit import testing

T0 = datetime.datetime(2026, 11, 25, 10, 0, 0)


def notification(action='attach', phase='start', *, at=None, message_id=None, **data):
    """(ctxt, message) as oslo.messaging hands them to the endpoint."""
    payload = testing.payload(action, phase, **data)
    values = payload[contract.PREFIX + 'data']
    msg = testing.message(action, phase, payload, message_id=message_id,
                          timestamp=str(at) if at else None)
    ctxt = {'request_id': values['request_id'], 'global_request_id': None,
            'user_id': values['user_id'], 'project_id': values['project_id'],
            'msg_id': None, 'reply_q': None, 'client_timeout': None}
    return ctxt, msg


def event(action='attach', phase='start', *, at=T0, message_id=None, **data):
    ctxt, msg = notification(action, phase, at=at, message_id=message_id, **data)
    return contract.parse(ctxt, msg, at, 64 * 1024)


def rows(engine, table, **where):
    with engine.connect() as conn:
        stmt = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
        return [dict(r) for r in conn.execute(stmt).mappings()]


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# --- what the raw-body guard in front of the rabbit consumer sees ----------------------

class FakeKombuMessage(kombu_message.Message):
    def __init__(self, body, content_type='application/json'):
        encoding = 'utf-8' if content_type.endswith('json') else 'binary'
        super().__init__(body=body, content_type=content_type, content_encoding=encoding)
        self.settled = None

    def ack(self, multiple=False):
        self.settled = 'ack'

    def requeue(self):
        self.settled = 'requeue'


class FakeConsumer:
    def __init__(self):
        self.queue = types.SimpleNamespace(channel=None)
        self.taken = []
        self.callback = self.taken.append

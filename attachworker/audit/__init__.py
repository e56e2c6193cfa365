"""The audit consumer: notifications in, one SQL row per event and per operation out.

Delivery, decided in :mod:`attachworker.audit.consumer` and nowhere else:
notifications arrive at least once, in batches stored one transaction each, and
are acknowledged only after their rows are committed. A ``message_id`` already
stored is acknowledged without a second row (a UNIQUE constraint decides, so two
consumers racing on one message agree). During a database outage the
consumer holds what it has and stores it after a back-off (never a requeue).
A message that is malformed or not ours, or that the database refuses,
is stored in ``rejected`` with the reason (every text masked), then acknowledged:
the rest of its batch is stored, and it is never requeued.

Modules: ``models`` (tables), ``contract`` (reading a notification),
``masking`` (secrets), ``store`` (writes), ``consumer`` and ``backoff`` (the
endpoint), ``listener`` (oslo.messaging wiring, and where oslo.messaging loses
messages), ``queries`` and ``formatting`` (the read side), ``migration``
(alembic), ``testing`` (payload builders and a publisher, for tests and tools).
"""

"""The journal's read-only questions: an operation's stack and trail, operations by
state, orphans, what unfinished operations hold. Mixed into Journal (it supplies
``_read``, ``state_path`` and ``owner``)."""
import json
from typing import Optional

from attachworker.worker import locks


class JournalQueries:
    def stack(self, op_id: str) -> list:
        """Every undo entry of an operation, decoded, in seq order."""
        rows = self._read('SELECT seq, step, name, kind, args, state FROM undos '
                          'WHERE op_id=? ORDER BY seq', op_id)
        for row in rows:
            row['args'] = json.loads(row['args'])
        return rows

    def steps(self, op_id: str) -> list:
        return self._read('SELECT step, state, at FROM steps WHERE op_id=? ORDER BY seq',
                          op_id)

    def get(self, key: str) -> Optional[dict]:
        """One operation, by our op id or by its request id (the newest one)."""
        rows = self._read('SELECT * FROM operations WHERE op_id=? OR request_id=? '
                          'ORDER BY created_at DESC LIMIT 1', key, key)
        return decode(rows[0]) if rows else None

    def list(self, states: Optional[tuple] = None, limit: int = 100) -> list:
        if states:
            marks = ','.join('?' * len(states))
            rows = self._read('SELECT * FROM operations WHERE state IN (%s) '
                              'ORDER BY created_at DESC LIMIT ?' % marks, *states, limit)
        else:
            rows = self._read('SELECT * FROM operations ORDER BY created_at DESC LIMIT ?',
                              limit)
        return [decode(r) for r in rows]

    def unfinished_counts(self) -> tuple:
        """(orphans: running operations whose owner is gone, operations whose undo
        failed), from one grouped query (each owner's liveness probed once)."""
        rows = self._read("SELECT owner, state, COUNT(*) AS n FROM operations WHERE state "
                          "IN ('running', 'undo_failed') GROUP BY owner, state")
        alive = {owner: locks.owner_alive(self.state_path, owner)
                 for owner in {r['owner'] for r in rows if r['state'] == 'running'}}
        return (sum(r['n'] for r in rows if r['state'] == 'running' and not alive[r['owner']]),
                sum(r['n'] for r in rows if r['state'] == 'undo_failed'))

    def orphans(self, states: tuple = ('running',)) -> list:
        """Operations in ``states`` whose owner process is gone (or is this one, for
        anything but ``running``: a live process retries its own failed undos)."""
        return [op for op in self.list(states, limit=100000)
                if (op['owner'] == self.owner and states != ('running',))
                or not locks.owner_alive(self.state_path, op['owner'])]

    def attachments_in_use(self) -> set:
        """Attachment ids that unfinished operations hold, whoever runs them: their
        cast's, and those their undo entries name."""
        ids = set()
        for op in self.list(('running', 'undo_failed'), limit=100000):
            if op['fields'].get('attachment_id'):
                ids.add(op['fields']['attachment_id'])
            for entry in self.stack(op['op_id']):
                if entry['args'].get('attachment_id'):
                    ids.add(entry['args']['attachment_id'])
        return ids

    def superseded(self, record: dict) -> bool:
        """Did a later attach or detach of the same instance and volume complete? (An
        extend or a refresh does not count: it changes nothing of whether the volume
        is attached.)"""
        fields = record['fields']
        if record.get('action') == 'volume_refresh':
            return False  # its finish entry decides (it knows a detach came since)
        for op in self.list(('completed',), limit=1000):
            if (op['created_at'] > record['created_at']
                    and op['action'] in ('volume_attach', 'volume_detach')
                    and op['fields'].get('instance_uuid') == fields.get('instance_uuid')
                    and op['fields'].get('volume_id') == fields.get('volume_id')):
                return True
        return False



def decode(row: dict) -> dict:
    row['fields'] = json.loads(row['fields'])
    row['context'] = json.loads(row['context'])
    return row

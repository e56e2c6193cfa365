"""Cinder answering 500, 503, 504 or hanging 10 s, on each call of both flows in turn.

The worker reaches cinder-api through ``FaultProxy`` (``[cinder] endpoint_template``),
with ``[cinder] timeout = 5`` and ``http_retries = 1``. Each cast gets its own
volume, instance and request id; the proxy's rules match the request id the worker
sends to Cinder, so all casts of one flow run in parallel against one worker.

What the code promises (attachworker.cinder): connection failures, timeouts and
HTTP 500/504 are retried ``http_retries`` times only for idempotent calls (GET,
DELETE, the undo calls); a non-idempotent call is sent once, and when its failure
leaves open whether Cinder did it, its undo runs too; the pipeline undoes what it
did and publishes ``.error``. A hang here is Cinder doing the work
and answering after 10 s: the worker gives up after 5 s without knowing the
outcome.

Judged afterwards by Cinder itself, for every cast: exactly one ``.end`` or
``.error``; no volume ``reserved``, ``attaching`` or ``error_attaching``; an
``.end`` volume is ``in-use`` with exactly one attachment, ours; an ``.error``
volume is ``available`` with no attachment at all.
"""
import dataclasses
import re
import sqlite3
import time
from typing import Optional
import uuid

import pytest

from tests.integration.conftest import caller_context
from tests.integration.fault_proxy import FaultProxy

HANG = 10
TIMEOUT = 5
STUCK = {'reserved', 'attaching', 'error_attaching'}
UUID = r'[0-9a-f-]{36}'

#: Pipeline step (as named in fault.step) -> the Cinder request it sends.
CALLS = {
    'get_volume': ('GET', r'/volumes/%s$' % UUID, None),
    'attachment_create': ('POST', r'/attachments$', None),
    'attachment_update': ('PUT', r'/attachments/%s$' % UUID, None),
    'attachment_complete': ('POST', r'/attachments/%s/action$' % UUID, 'os-complete'),
    'attachment_delete': ('DELETE', r'/attachments/%s$' % UUID, None),
    'reserve': ('POST', r'/volumes/%s/action$' % UUID, 'os-reserve'),
    'initialize_connection': ('POST', r'/volumes/%s/action$' % UUID,
                              'os-initialize_connection'),
    'attach': ('POST', r'/volumes/%s/action$' % UUID, 'os-attach'),
    'unreserve': ('POST', r'/volumes/%s/action$' % UUID, 'os-unreserve'),
    'terminate_connection': ('POST', r'/volumes/%s/action$' % UUID,
                             'os-terminate_connection'),
}
STEPS = {
    'attachments': ['get_volume', 'attachment_create', 'attachment_update',
                    'attachment_complete'],
    'legacy': ['get_volume', 'reserve', 'initialize_connection', 'attach'],
}
#: (a later step that fails with a 500, the undo that then fails too)
UNDOS = {
    'attachments': [('attachment_update', 'attachment_delete')],
    'legacy': [('initialize_connection', 'unreserve'), ('attach', 'terminate_connection')],
}
#: The Cinder call an undo makes -> the undo's name (attachworker.worker.undo)
UNDO_NAMES = {'attachment_delete': 'release_attachment'}
FAULTS = {'500': {'status': 500}, '503': {'status': 503}, '504': {'status': 504},
          'hang': {'hang': HANG}}
IDEMPOTENT = {'get_volume', 'attachment_delete', 'unreserve', 'terminate_connection'}


@dataclasses.dataclass
class Cast:
    label: str
    step: str
    kind: str
    undo: Optional[str] = None
    volume_id: str = ''
    instance_uuid: str = ''
    request_id: str = ''
    rules: list = dataclasses.field(default_factory=list)

    def promised(self) -> Optional[str]:
        """The outcome the code promises, or None when Cinder's answer decides."""
        if self.undo:
            return 'error'
        if self.kind == 'hang':
            return 'end' if self.step in IDEMPOTENT else None
        status = FAULTS[self.kind]['status']
        return 'end' if self.step in IDEMPOTENT and status in (500, 504) else 'error'


@pytest.fixture
def proxy():
    with FaultProxy() as running:
        yield running


def fault_worker(make_worker, proxy, flow, **options):
    return make_worker(cinder__endpoint_template=proxy.url + '/v3/%(project_id)s',
                       cinder__timeout=TIMEOUT, cinder__http_retries=1,
                       cinder__attach_flow=flow, **options)


def journal_state(worker, request_id):
    db = sqlite3.connect('file:%s?mode=ro' % (worker.state / 'journal.sqlite'), uri=True)
    try:
        row = db.execute('SELECT state FROM operations WHERE request_id=? '
                         'ORDER BY created_at DESC LIMIT 1', (request_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def cast_all(worker, ctl, proxy, sessions, volumes, casts):
    """Cast every case at once (one volume and instance each); wait for the outcomes."""
    for case, volume_id in zip(casts, volumes.make(len(casts)), strict=True):
        ctxt = caller_context(sessions['demo'])
        case.volume_id, case.request_id = volume_id, ctxt.request_id
        case.instance_uuid = str(uuid.uuid4())
        faults = [(case.step, FAULTS['500'] if case.undo else FAULTS[case.kind], 1)]
        if case.undo:
            # twice: the worker's own retry of an idempotent undo must fail too
            faults.append((case.undo, FAULTS[case.kind], 2))
        for step, how, times in faults:
            method, path, action = CALLS[step]
            case.rules.append(proxy.add(method, path, action=action,
                                        request_id=ctxt.request_id, times=times, **how))
        ctl.api.attach_volume(ctxt, worker.host, {'uuid': case.instance_uuid,
                                                  'project_id': ctxt.project_id},
                              volume_id, '/dev/vdb')
    return ctl.outcomes([c.request_id for c in casts], timeout=180)


def judge(ctl, proxy, admin_cinder, casts):
    """Every broken promise, as (label, what) pairs; and the counts for the figures."""
    problems, counts = [], {'end': 0, 'error': 0, 'stuck': 0}
    seen = ctl.outcomes([c.request_id for c in casts], timeout=1)
    for case in casts:
        def problem(what, case=case):
            problems.append((case.label, what))

        terminal = [e for e in seen.get(case.request_id, [])
                    if e.endswith(('.end', '.error'))]
        if len(terminal) != 1:
            problem('terminal notifications: %s' % terminal)
        phase = terminal[-1].rsplit('.', 1)[1] if terminal else None
        if phase:
            counts[phase] += 1
        volume = admin_cinder.volumes.get(case.volume_id)
        listed = list(admin_cinder.attachments.list(
            search_opts={'volume_id': case.volume_id, 'all_tenants': 1}))
        if volume.status in STUCK:
            counts['stuck'] += 1
            problem('volume left %s' % volume.status)
        if phase == 'end' and (volume.status != 'in-use' or len(listed) != 1
                               or [a['server_id'] for a in volume.attachments]
                               != [case.instance_uuid]):
            problem('.end but volume %s, attachments %s'
                    % (volume.status, [(a.id, a.status) for a in listed]))
        if phase == 'error' and (volume.status != 'available' or listed):
            problem('.error but volume %s, attachments %s'
                    % (volume.status, [(a.id, a.status) for a in listed]))
        if case.promised() and phase != case.promised():
            problem('ended %s, the code promises %s (fault %s)'
                    % (phase, case.promised(), ctl.fault(case.request_id)))
        fault = ctl.fault(case.request_id) if phase == 'error' else None
        if fault and (case.undo or case.kind != 'hang'):
            status = FAULTS['500' if case.undo else case.kind]['status']
            if (fault['step'], fault['exception'], fault['code']) != (
                    case.step, 'CinderUnavailable', status):
                problem('fault %s' % fault)
        undo_name = UNDO_NAMES.get(case.undo, case.undo)  # the journalled undo's name
        if case.undo and fault and 'undo failed: %s' % undo_name not in fault['message']:
            problem('the failed undo is not reported: %s' % fault['message'])
        for rule in case.rules:
            if rule.injected != rule.times:
                problem('rule %s %s injected %d times, not %d'
                        % (rule.method, rule.path, rule.injected, rule.times))
        for record in proxy.records(case.request_id):
            # the worker gave up before the 10 s were over: [cinder] timeout is honoured
            if record.fault and record.fault.startswith('hang') and record.delivered:
                problem('the worker waited out a %s on %s %s'
                        % (record.fault, record.method, record.path))
    return problems, counts


def report(title, ctl, proxy, casts, counts, problems, elapsed):
    """The figure line; for each cast with a problem, what the worker sent and heard."""
    print('%s: %d casts, %d .end, %d .error, %d stuck volumes, %d problems, %.1f s'
          % (title, len(casts), counts['end'], counts['error'], counts['stuck'],
             len(problems), elapsed))
    for case in casts:
        found = [what for label, what in problems if label == case.label]
        if not found:
            continue
        print('  %s (volume %s): %s' % (case.label, case.volume_id, '; '.join(found)))
        print('    fault: %s' % ctl.fault(case.request_id))
        for r in proxy.records(case.request_id):
            print('    %-6s %-50s %-24s -> %s%s %s'
                  % (r.method, re.sub(r'^/v3/[0-9a-f]+', '', r.path), r.action or '',
                     r.status, ' (%s)' % r.fault if r.fault else '',
                     'still held' if not r.finished else 'after %.1f s%s' % (
                         r.seconds, '' if r.delivered else ', never delivered')))


@pytest.mark.slow
@pytest.mark.parametrize('flow', sorted(STEPS))
def test_a_fault_on_each_cinder_call_ends_the_cast_and_leaves_nothing_stuck(
        flow, proxy, make_worker, controller, sessions, volumes, admin_cinder):
    worker = fault_worker(make_worker, proxy, flow)
    ctl = controller(worker)
    casts = [Cast('%s %s' % (step, kind), step, kind)
             for step in STEPS[flow] for kind in FAULTS]
    t0 = time.monotonic()
    cast_all(worker, ctl, proxy, sessions, volumes, casts)
    problems, counts = judge(ctl, proxy, admin_cinder, casts)
    elapsed = time.monotonic() - t0
    (hung,) = [c for c in casts if (c.step, c.kind) == ('get_volume', 'hang')]
    end = [n for n in ctl.notes(hung.request_id) if n['event_type'].endswith('.end')]
    took = end[0]['payload']['attachworker_object.data']['duration_ms'] / 1000 if end else 0
    # [cinder] timeout = 5 is honoured: one timeout, then the GET again, and done
    # well before the 10 s hang is over
    if not TIMEOUT <= took < HANG:
        problems.append((hung.label, 'attached after %.1f s' % took))
    report('Cinder faults, %s flow (GET hang done in %.1f s)' % (flow, took), ctl, proxy,
           casts, counts, problems, elapsed)
    assert not problems, problems


@pytest.mark.slow
@pytest.mark.parametrize('flow', sorted(UNDOS))
def test_a_failed_undo_is_journalled_and_finished_by_reconcile(
        flow, proxy, make_worker, controller, sessions, volumes, admin_cinder):
    worker = fault_worker(make_worker, proxy, flow, worker__reconcile_interval=2)
    ctl = controller(worker)
    casts = [Cast('%s 500, undo %s %s' % (step, undo, kind), step, kind, undo)
             for step, undo in UNDOS[flow] for kind in FAULTS]
    t0 = time.monotonic()
    cast_all(worker, ctl, proxy, sessions, volumes, casts)
    # the periodic reconcile (every 5 s at best) retries the undo that failed
    deadline = time.monotonic() + 90
    states = {}
    while time.monotonic() < deadline:
        states = {c.label: journal_state(worker, c.request_id) for c in casts}
        if set(states.values()) == {'recovered'}:
            break
        time.sleep(1)
    problems, counts = judge(ctl, proxy, admin_cinder, casts)
    problems += [(label, 'journal state %s, not recovered' % state)
                 for label, state in states.items() if state != 'recovered']
    elapsed = time.monotonic() - t0
    report('Failed undos, %s flow' % flow, ctl, proxy, casts, counts, problems, elapsed)
    assert not problems, problems

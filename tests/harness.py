"""Test helpers shared by functional and integration tests.

``Worker`` runs ``attachworker-compute`` as a subprocess with its own config file,
host name and ``control_exchange`` (so tests never see each other's casts);
``Controller`` is the other side: ``rpcapi`` plus an ``OutcomeWatcher`` over the
real RabbitMQ.
"""
import configparser
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Optional
import uuid

from oslo_config import cfg

from attachworker import config
from attachworker import outcome
from attachworker import rpc
from attachworker import rpcapi
from attachworker.virt import fake_store

BIN = pathlib.Path(sys.executable).parent


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll until ``predicate()`` is true; False if it is still not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def fake_virt_record(state, instance_uuid: str) -> dict:
    """The fake virt driver's committed record of one instance under a worker's
    ``state_path``, read as another process would ({} when it has none)."""
    path = pathlib.Path(state) / 'fake-virt' / 'records.sqlite'
    if not path.exists():
        return {}
    db = sqlite3.connect('file:%s?mode=ro' % path, uri=True, timeout=30)
    try:
        row = db.execute(fake_store.SELECT_ONE, (instance_uuid,)).fetchone()
    finally:
        db.close()
    return json.loads(row[0]) if row else {}


def files_bytes(directory) -> bytes:
    """Every byte of every file under directory (a database, its WAL...), for scans."""
    return b''.join(path.read_bytes() for path in sorted(pathlib.Path(directory).rglob('*'))
                    if path.is_file())


def terminate(proc: Optional[subprocess.Popen], timeout: float = 60) -> Optional[int]:
    """SIGTERM, then SIGKILL after ``timeout`` s; the exit status (None: never started)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode if proc is not None else None


def read_config(path) -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    sections = {'DEFAULT': dict(parser.defaults())}
    for name in parser.sections():
        sections[name] = {k: v for k, v in parser.items(name, raw=True)
                          if k not in parser.defaults()}
    return sections


class Worker:
    """attachworker-compute as a subprocess."""

    def __init__(self, directory: pathlib.Path, sections: dict, **options) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.host = 'test-%s' % uuid.uuid4().hex[:8]
        self.exchange = 'attachworker-test-%s' % uuid.uuid4().hex[:8]
        self.log = directory / 'worker.log'
        self.out = directory / 'worker.out'
        self.state = directory / 'state'
        sections = {group: dict(values) for group, values in sections.items()}
        sections.setdefault('DEFAULT', {}).update(
            control_exchange=self.exchange, host=self.host, state_path=self.state,
            log_file=self.log)
        for key, value in options.items():
            group, name = key.split('__') if '__' in key else ('DEFAULT', key)
            sections.setdefault(group, {})[name] = value
        self.config = directory / 'worker.conf'
        self.config.write_text(''.join(
            '[%s]\n%s\n' % (group, ''.join('%s = %s\n' % kv for kv in values.items()))
            for group, values in sections.items()))
        self.proc = None

    def start(self, timeout: float = 30, env: Optional[dict] = None) -> 'Worker':
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.out, 'a') as out:
            self.proc = subprocess.Popen(
                [str(BIN / 'attachworker-compute'), '--config-file', str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and 'attachworker-compute ready' in \
                    self.log.read_text()[offset:]:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError('worker did not start:\n' + self.logs()[-3000:])

    def stop(self, timeout: float = 60):
        return terminate(self.proc, timeout)

    def second_process(self) -> subprocess.Popen:
        """Another attachworker-compute on the same config (host, state_path), as in a
        rolling-restart overlap; returns once both say they are ready."""
        proc = subprocess.Popen([str(BIN / 'attachworker-compute'), '--config-file',
                                 str(self.config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.log.read_text().count('attachworker-compute ready') < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError('the second process did not start:\n'
                                     + self.logs()[-3000:])
            time.sleep(0.1)
        return proc

    def logs(self) -> str:
        return ''.join(p.read_text() for p in (self.log, self.out) if p.exists())


class Controller:
    """The controller's side: casts through rpcapi, watches notifications.

    ``watch_queue``: a named durable queue for the watcher, so that it survives a
    broker restart (attachworker.outcome).
    """

    def __init__(self, worker: Worker, watch_queue: Optional[str] = None) -> None:
        self.conf = cfg.CONF
        config.parse_args(self.conf, ['test', '--config-file', str(worker.config)], 'test')
        self.transport = rpc.get_rpc_transport(self.conf)
        self.api = rpcapi.ComputeAPI(self.conf, self.transport)
        self.watcher = outcome.OutcomeWatcher(self.conf, queue=watch_queue).__enter__()

    def close(self) -> None:
        self.watcher.__exit__(None, None, None)
        self.transport.cleanup()
        self.conf.reset()

    def outcomes(self, request_ids, timeout: float = 60) -> dict:
        """{request_id: [event types]} once each has an .end or .error, or at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            seen: dict = {}
            for note in self.watcher.events():
                seen.setdefault(outcome.request_id_of(note), []).append(note['event_type'])
            done = all(any(e.endswith(('.end', '.error')) for e in seen.get(r, []))
                       for r in request_ids)
            if done or time.monotonic() > deadline:
                return seen
            time.sleep(0.1)

    def notes(self, request_id: str) -> list:
        return self.watcher.events(request_id)

    def fault(self, request_id: str):
        for note in self.notes(request_id):
            if note['event_type'].endswith('.error'):
                return note['payload']['attachworker_object.data']['fault']
        return None

"""Group commit never says a write is on disk when it is not, never says it failed when
it is on disk, and never leaves a writer waiting: under COMMIT failures, SQLite rolling
a whole transaction back, and many threads."""
import os
import sqlite3
import threading
import time

import pytest

from attachworker.worker.group_commit import GroupCommit


def connect(path):
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute('PRAGMA journal_mode=WAL')
    db.execute('PRAGMA synchronous=FULL')
    return db


@pytest.fixture
def path(tmp_path):
    p = str(tmp_path / 'j.sqlite')
    db = connect(p)
    db.execute('CREATE TABLE t (k TEXT PRIMARY KEY)')
    db.execute('CREATE TABLE big (x BLOB)')
    db.close()
    return p


def on_disk(path):
    other = sqlite3.connect(path)
    try:
        return {k for (k,) in other.execute('SELECT k FROM t')}
    finally:
        other.close()


class FailingCommits:
    """A connection whose COMMITs fail while ``failing`` is set (a full or broken disk)."""

    def __init__(self, db):
        self._db = db
        self.failing = True

    @property
    def in_transaction(self):
        return self._db.in_transaction

    def execute(self, sql, *args):
        if sql == 'COMMIT' and self.failing:
            time.sleep(0.001)
            raise sqlite3.OperationalError('disk I/O error')
        return self._db.execute(sql, *args)


def hammer(group, threads, writes, wait=True):
    told = {}

    def run(n):
        for i in range(writes):
            key = '%d-%d' % (n, i)
            try:
                with group.write(wait) as db:
                    db.execute('INSERT INTO t VALUES (?)', (key,))
                told[key] = 'ok'
            except sqlite3.Error:
                told[key] = 'error'
    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), 'a writer never returned'
    return told


def test_failing_commits_never_report_a_write_as_done(path):
    db = connect(path)
    conn = FailingCommits(db)
    group = GroupCommit(conn)
    told = hammer(group, threads=64, writes=20)
    conn.failing = False
    group.close()
    disk = on_disk(path)
    lied = [k for k, v in told.items() if v == 'ok' and k not in disk]
    assert not lied, '%d writes told ok are not on disk' % len(lied)
    assert set(told.values()) == {'error'}


def test_every_write_told_ok_is_on_disk_and_every_error_is_not(path):
    db = connect(path)
    conn = FailingCommits(db)
    conn.failing = False
    group = GroupCommit(conn)

    def flap():
        for _ in range(200):
            conn.failing = not conn.failing
            time.sleep(0.002)
        conn.failing = False
    flapper = threading.Thread(target=flap)
    flapper.start()
    told = hammer(group, threads=16, writes=40)
    flapper.join()
    group.close()
    disk = on_disk(path)
    assert [k for k, v in told.items() if v == 'ok' and k not in disk] == []
    assert [k for k, v in told.items() if v == 'error' and k in disk] == []
    assert 'ok' in told.values() and 'error' in told.values()


def test_a_transaction_sqlite_rolled_back_fails_its_batch_and_the_next_write_is_true(path):
    db = connect(path)
    group = GroupCommit(db)
    gate = threading.Event()
    commit = group._commit
    group._commit = lambda: (gate.wait(10), commit())  # writers gather in one batch
    results = {}

    def writer(name, sql):
        try:
            with group.write() as c:
                c.execute(sql)
            results[name] = 'ok'
        except sqlite3.Error as exc:
            results[name] = 'error: %s' % exc
    first = threading.Thread(target=writer, args=('w1', "INSERT INTO t VALUES ('w1')"))
    first.start()
    time.sleep(0.2)
    db.execute('PRAGMA max_page_count=%d' % db.execute('PRAGMA page_count').fetchone()[0])
    writer('w2', 'INSERT INTO big VALUES (zeroblob(200000))')  # SQLITE_FULL: all gone
    assert not db.in_transaction  # SQLite rolled the whole batch back, w1's row too
    db.execute('PRAGMA max_page_count=1000000')
    third = threading.Thread(target=writer, args=('w3', "INSERT INTO t VALUES ('w3')"))
    third.start()
    time.sleep(0.2)
    gate.set()
    first.join(10)
    third.join(10)
    group.close()
    assert results['w1'].startswith('error') and results['w2'].startswith('error')
    assert results['w3'] == 'ok', results
    assert on_disk(path) == {'w3'}


def test_an_unexpected_commit_error_still_settles_the_batch(path):
    db = connect(path)

    class Weird(FailingCommits):
        def execute(self, sql, *args):
            if sql == 'COMMIT' and self.failing:
                self.failing = False
                raise MemoryError('out of memory')
            return self._db.execute(sql, *args)
    group = GroupCommit(Weird(db))
    done = []

    def write():
        try:
            with group.write() as c:
                c.execute("INSERT INTO t VALUES ('x')")
            done.append('ok')
        except MemoryError:
            done.append('error')
    writer = threading.Thread(target=write)
    writer.start()
    writer.join(10)
    assert not writer.is_alive() and done == ['error']
    with group.write() as c:  # and the journal goes on
        c.execute("INSERT INTO t VALUES ('y')")
    group.close()
    assert on_disk(path) == {'y'}


def test_writes_not_waited_for_are_on_disk_after_close(path):
    group = GroupCommit(connect(path))
    for i in range(50):
        with group.write(wait=False) as c:
            c.execute('INSERT INTO t VALUES (?)', (str(i),))
    group.close()
    assert len(on_disk(path)) == 50
    with pytest.raises(sqlite3.ProgrammingError):
        with group.write() as c:
            c.execute("INSERT INTO t VALUES ('late')")


def test_sync_waits_for_what_was_written_before(path):
    group = GroupCommit(connect(path))
    with group.write(wait=False) as c:
        c.execute("INSERT INTO t VALUES ('a')")
    group.sync()
    assert on_disk(path) == {'a'}
    group.close()
    assert os.path.exists(path)


def test_a_failing_body_returns_only_once_what_it_read_is_on_disk(path):
    """What a failing body decided (e.g. "that device is taken") may rest on another
    writer's statements of the same batch: it is not reported before they are on disk."""
    group = GroupCommit(connect(path))
    with group.write(wait=False) as db:  # another writer: in the open batch
        db.execute("INSERT INTO t VALUES ('a')")
    with pytest.raises(ValueError, match='taken'):
        with group.write() as db:
            if db.execute("SELECT k FROM t WHERE k = 'a'").fetchone():
                db.execute("INSERT INTO t VALUES ('b')")
                raise ValueError('a is taken')
    assert on_disk(path) == {'a'}  # committed before the refusal came back; b undone
    group.close()


def test_a_failing_body_in_a_batch_that_fails_gets_the_batchs_error(path):
    conn = FailingCommits(connect(path))
    group = GroupCommit(conn)
    with pytest.raises(sqlite3.OperationalError, match='disk I/O') as info:
        with group.write() as db:
            db.execute("INSERT INTO t VALUES ('a')")
            raise ValueError('refused on the strength of a')
    assert isinstance(info.value.__cause__, ValueError)
    conn.failing = False
    group.close()
    assert on_disk(path) == set()


def test_a_body_whose_savepoint_cannot_be_undone_fails_the_whole_batch(path):
    """Never commit half of a failed writer: when ROLLBACK TO fails, everything goes."""
    class NoRollbackTo(FailingCommits):
        def execute(self, sql, *args):
            if sql == 'ROLLBACK TO w':
                raise sqlite3.OperationalError('cannot roll back to w')
            return self._db.execute(sql, *args)
    conn = NoRollbackTo(connect(path))
    group = GroupCommit(conn)
    with group.write(wait=False) as db:
        db.execute("INSERT INTO t VALUES ('a')")
    with pytest.raises(sqlite3.OperationalError, match='rolled back'):
        with group.write() as db:
            db.execute("INSERT INTO t VALUES ('b')")
            raise ValueError('failed half way')
    with group.write() as db:  # the next write begins a new batch, and is true
        db.execute("INSERT INTO t VALUES ('c')")
    group.close()
    assert on_disk(path) == {'c'}


def writer_lock_is_free(lock_path):
    """Can another process (another open file description) take the writer lock?"""
    import fcntl
    with open(lock_path, 'a') as other:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True


def test_the_writer_lock_is_held_from_a_batchs_begin_to_its_end(path):
    """Other processes wait for it in the kernel, not in SQLite's busy handler; it is
    never left held: not after a COMMIT, a failed one, or SQLite's own rollback."""
    lock_path = path + '.writer'
    conn = FailingCommits(connect(path))
    conn.failing = False
    group = GroupCommit(conn, writer_lock=lock_path)
    gate = threading.Event()
    commit = group._commit
    group._commit = lambda: (gate.wait(10), commit())
    waiter = threading.Thread(target=hammer, args=(group, 1, 1))
    waiter.start()
    time.sleep(0.2)
    assert not writer_lock_is_free(lock_path)  # the batch is open
    gate.set()
    waiter.join(10)
    assert writer_lock_is_free(lock_path)
    assert on_disk(path) == {'0-0'}
    conn.failing = True  # a failed COMMIT releases it too
    assert set(hammer(group, 1, 1).values()) == {'error'}
    assert writer_lock_is_free(lock_path)
    conn.failing = False
    db = conn._db  # SQLite rolling the transaction back by itself (SQLITE_FULL)
    db.execute('PRAGMA max_page_count=%d' % db.execute('PRAGMA page_count').fetchone()[0])
    with pytest.raises(sqlite3.Error):
        with group.write() as c:
            c.execute('INSERT INTO big VALUES (zeroblob(200000))')
    assert writer_lock_is_free(lock_path)
    db.execute('PRAGMA max_page_count=1000000')
    group.close()


def test_two_processes_sharing_a_database_each_wait_for_the_writer_lock(path, tmp_path):
    """Every write of each process is on disk, and each process's batches hold the
    lock (a writer of the other process never finds SQLite's lock taken: no busy
    error even with a busy timeout of zero)."""
    import subprocess
    import sys
    script = (
        'import sqlite3, sys\n'
        'from attachworker.worker.group_commit import GroupCommit\n'
        'db = sqlite3.connect(sys.argv[1], check_same_thread=False, isolation_level=None,'
        ' timeout=0)\n'
        'g = GroupCommit(db, writer_lock=sys.argv[1] + ".writer")\n'
        'for i in range(300):\n'
        '    with g.write() as c:\n'
        '        c.execute("INSERT INTO t VALUES (?)", ("%s-%d" % (sys.argv[2], i),))\n'
        'g.close()\n')
    procs = [subprocess.Popen([sys.executable, '-c', script, path, name])
             for name in ('p1', 'p2')]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(on_disk(path)) == 600


def test_a_peer_that_keeps_its_batch_open_costs_an_error_not_a_hang(path):
    """A SIGSTOPped peer holds the writer lock: a write fails after the busy timeout
    (as SQLite's lock would have made it), nothing of it is on disk, and the writes
    after the peer is gone succeed."""
    import fcntl
    lock_path = path + '.writer'
    group = GroupCommit(connect(path), writer_lock=lock_path, busy_timeout=0.3)
    with open(lock_path, 'a') as peer:
        fcntl.flock(peer, fcntl.LOCK_EX)
        assert set(hammer(group, 3, 1).values()) == {'error'}
        fcntl.flock(peer, fcntl.LOCK_UN)
    group._writer.timeout = 30  # the lock's thread may still be letting go
    assert set(hammer(group, 3, 2).values()) == {'ok'}
    group.close()
    assert on_disk(path) == {'%d-%d' % (n, i) for n in range(3) for i in range(2)}
    assert writer_lock_is_free(lock_path)


class FailingRollbacks(FailingCommits):
    """COMMIT and ROLLBACK both fail: SQLite's transaction (and its lock) stays open."""

    def __init__(self, db):
        super().__init__(db)
        self.rollback_fails = True

    def execute(self, sql, *args):
        if sql == 'ROLLBACK' and self.rollback_fails:
            raise sqlite3.OperationalError('disk I/O error')
        return super().execute(sql, *args)


def test_the_writer_lock_is_kept_while_a_failed_commit_leaves_the_transaction_open(path):
    """Letting go would only make the next process wait inside the flock for SQLite's
    lock; the next batch of this process rolls the transaction back first."""
    lock_path = path + '.writer'
    conn = FailingRollbacks(connect(path))
    group = GroupCommit(conn, writer_lock=lock_path)
    assert set(hammer(group, 1, 1).values()) == {'error'}
    assert conn.in_transaction
    assert not writer_lock_is_free(lock_path)
    conn.failing = conn.rollback_fails = False
    assert set(hammer(group, 1, 1).values()) == {'ok'}
    assert writer_lock_is_free(lock_path)
    assert on_disk(path) == {'0-0'}  # the failed batch's write was rolled back
    group.close()


def test_a_durable_database_opens_while_a_peer_holds_the_writer_lock(tmp_path):
    """A peer stuck in its batch (SIGSTOPped, its disk hung) must not keep a process
    from opening the database, to read it or to recover: a schema that is there
    needs no write."""
    import fcntl

    from attachworker.worker.group_commit import DurableDB

    def prepare(db):
        db.executescript('CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY);')
    path = str(tmp_path / 'd.sqlite')
    first = DurableDB(path, prepare)
    with first.group.write() as db:
        db.execute("INSERT INTO t VALUES ('a')")
    first.close()
    opened = []
    with open(path + '.writer', 'a') as peer:
        fcntl.flock(peer, fcntl.LOCK_EX)
        opener = threading.Thread(target=lambda: opened.append(DurableDB(path, prepare)))
        opener.start()
        opener.join(10)
        assert opened, 'opening waited for the peer'
        store = opened[0]
        assert store.read_committed('SELECT k FROM t') == [('a',)]
        assert store.db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
        assert store.db.execute('PRAGMA synchronous').fetchone()[0] == 2  # FULL
        fcntl.flock(peer, fcntl.LOCK_UN)
    with store.group.write() as db:
        db.execute("INSERT INTO t VALUES ('b')")
    store.close()
    assert on_disk(path) == {'a', 'b'}
    assert writer_lock_is_free(path + '.writer')


def test_closing_rolls_back_what_a_failed_commit_left_open_before_letting_go(path):
    lock_path = path + '.writer'
    conn = FailingRollbacks(connect(path))
    group = GroupCommit(conn, writer_lock=lock_path)
    assert set(hammer(group, 1, 1).values()) == {'error'}
    assert conn.in_transaction and not writer_lock_is_free(lock_path)
    conn.rollback_fails = False
    group.close()
    assert not conn.in_transaction
    assert writer_lock_is_free(lock_path)
    assert on_disk(path) == set()

"""reserve_block_device_name over the real RabbitMQ: a call, answered by either of two
processes serving one host, never the same name twice (issue 11, item 1)."""
import threading
import uuid

import oslo_messaging as messaging
import pytest

from tests.functional.test_kill_backlog import caller


def test_two_processes_never_hand_out_the_same_name(make_worker, controller, cinder):
    worker = make_worker().start()
    second = worker.second_process()
    try:
        ctl = controller(worker)
        instance = {'uuid': str(uuid.uuid4())}
        volumes = [str(uuid.uuid4()) for _ in range(16)]
        names, errors = {}, []

        def reserve(volume_id):
            try:
                names[volume_id] = ctl.api.reserve_block_device_name(
                    caller(), worker.host, instance, volume_id, timeout=30)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=reserve, args=(v,)) for v in volumes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(names.values(), key=lambda n: (len(n), n)) == [
            '/dev/vd' + c for c in 'bcdefghijklmnopq']
        served = {line.split()[2] for line in worker.log.read_text().splitlines()
                  if 'Reserved /dev/' in line}
        print('16 concurrent reservations through 2 processes: 16 names, %d process(es) '
              'answered' % len(served))
        # a refusal reaches the caller as a RemoteError naming it
        with pytest.raises(messaging.RemoteError) as refused:
            ctl.api.reserve_block_device_name(caller(), worker.host, instance, volumes[0],
                                              timeout=30)
        assert refused.value.exc_type == 'VolumeAlreadyAttached'
        # and the attach that follows uses the name it was given
        volume_id = cinder.add_volume()
        device = ctl.api.reserve_block_device_name(caller(), worker.host, instance,
                                                   volume_id, timeout=30)
        ctxt = caller()
        ctl.api.attach_volume(ctxt, worker.host, instance, volume_id, device)
        note = ctl.watcher.wait(ctxt.request_id, 30)
        assert note['event_type'] == 'instance.volume_attach.end', worker.logs()[-2000:]
        assert note['payload']['attachworker_object.data']['mountpoint'] == device
    finally:
        second.terminate()
        second.wait(60)

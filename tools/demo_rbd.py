"""tools/demo's proof with bytes: write a pattern through a guest's disk, read it back
from the volume's RBD image (as client.cinder, through Ceph's own binding).

    python tools/demo_rbd.py STORAGE_JSON INSTANCE_UUID VOLUME_ID

The disk is found in the guest's live XML by its serial (the volume id); QEMU writes
through it (HMP ``qemu-io`` on the disk's device, as a guest's writes would go), and
the bytes are read from image ``<pool>/volume-<id>``. Exit 0 when they match.
"""
import json
import sys
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu

PATTERN, LENGTH, OFFSET = 0x5a, 4096, 1024 * 1024


def main(argv: list) -> int:
    storage = json.load(open(argv[1]))
    instance_uuid, volume_id = argv[2], argv[3]
    conn = libvirt.open(storage['libvirt_uri'])
    dom = conn.lookupByUUIDString(instance_uuid)
    disk = next((d for d in ET.fromstring(dom.XMLDesc()).iter('disk')
                 if d.findtext('serial') == volume_id), None)
    if disk is None:
        print('the guest has no disk with serial %s' % volume_id)
        return 1
    device = disk.find('alias').get('name')
    source = disk.find('source')
    print('guest %s has volume %s as %s (%s, %s protocol, image %s)' % (
        dom.name(), volume_id, disk.find('target').get('dev'), device,
        source.get('protocol'), source.get('name')))
    libvirt_qemu.qemuMonitorCommand(
        dom, 'qemu-io -d %s "write -P 0x%x %d %d"' % (device, PATTERN, OFFSET, LENGTH),
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    print('QEMU wrote %d bytes of 0x%x at offset %d through the guest disk'
          % (LENGTH, PATTERN, OFFSET))
    import rados
    import rbd
    cluster = rados.Rados(conffile=storage['ceph_conf'], rados_id=storage['ceph_user'],
                          conf={'keyring': storage['ceph_keyring']})
    cluster.connect(timeout=10)
    try:
        with cluster.open_ioctx(storage['ceph_pool']) as ioctx, \
                rbd.Image(ioctx, 'volume-%s' % volume_id, read_only=True) as image:
            data = image.read(OFFSET, LENGTH)
    finally:
        cluster.shutdown()
    ok = data == bytes([PATTERN]) * LENGTH
    print('Ceph has them: image %s/volume-%s holds %s at offset %d' % (
        storage['ceph_pool'], volume_id,
        '%d bytes of 0x%x' % (LENGTH, PATTERN) if ok else 'other bytes', OFFSET))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv))

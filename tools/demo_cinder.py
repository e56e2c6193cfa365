"""Small Cinder helper for tools/demo, acting as the user in the OS_* environment.

    python tools/demo_cinder.py create [TYPE]   create a 1 GB volume (of volume type TYPE),
                                                wait until it is available
    python tools/demo_cinder.py show VOLUME_ID  print status and attachments as Cinder sees them
"""
import os
import sys
import time

from cinderclient import client as cinder_client
from keystoneauth1 import loading
from keystoneauth1 import session


def cinder():
    auth = loading.get_plugin_loader('password').load_from_options(
        auth_url=os.environ['OS_AUTH_URL'], username=os.environ['OS_USERNAME'],
        password=os.environ['OS_PASSWORD'], project_name=os.environ['OS_PROJECT_NAME'],
        user_domain_id=os.environ.get('OS_USER_DOMAIN_ID', 'default'),
        project_domain_id=os.environ.get('OS_PROJECT_DOMAIN_ID', 'default'))
    return cinder_client.Client('3.44', session=session.Session(auth=auth),
                                region_name=os.environ.get('OS_REGION_NAME'))


def create(volume_type=None):
    c = cinder()
    volume = c.volumes.create(1, name='attachworker-demo', volume_type=volume_type)
    deadline = time.monotonic() + 120
    while volume.status != 'available':
        if volume.status == 'error' or time.monotonic() > deadline:
            sys.exit('volume %s ended %s' % (volume.id, volume.status))
        time.sleep(0.5)
        volume = c.volumes.get(volume.id)
    print(volume.id)


def show(volume_id):
    volume = cinder().volumes.get(volume_id)
    print('volume %s: status %s' % (volume.id, volume.status))
    # (non-admin users do not see the attached host: Cinder's policy hides it)
    for att in volume.attachments:
        print('  attachment %s: instance %s, device %s, attached at %s' % (
            att.get('attachment_id'), att.get('server_id'), att.get('device'),
            att.get('attached_at')))
    if not volume.attachments:
        print('  no attachments')


if __name__ == '__main__':
    if sys.argv[1:2] == ['create'] and len(sys.argv) <= 3:
        create(*sys.argv[2:])
    elif sys.argv[1:2] == ['show'] and len(sys.argv) == 3:
        show(sys.argv[2])
    else:
        sys.exit(__doc__)

"""The journal's JSON writer masks exactly as oslo.utils does, through its fast path
and its slow one alike."""
import collections.abc
import json

from oslo_utils import strutils
import pytest

from attachworker.worker.journal_schema import dumps


class Creds(dict):
    pass


class View(collections.abc.Mapping):
    """A Mapping that is not a dict, whose str() hides its keys."""

    def __init__(self, data):
        self._data = data

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __str__(self):
        return 'View(...)'


VALUES = [
    {'request_id': 'req-1', 'volume_id': 'b1204e0c-1', 'mountpoint': '/dev/vdb'},
    {'connector': {'initiator': 'iqn.2004-10.org:h', 'host': 'h', 'multipath': False}},
    {'password': 'hunter2'},
    {'Admin_Password': 'x', 'nested': {'auth_token': 'gAAAA', 'list': ['a', 1, None]}},
    {'mountpoint': 'password=hunter2'},
    {'mountpoint': "'token': 'abc'"},
    {'mountpoint': 'TO\u212aEN=abc'},  # a Kelvin sign: lower() makes it a k
    {'mountpoint': 'pässword=abc', 'x': '\ud800'},  # non-ASCII, a lone surrogate
    {'mountpoint': 'pass\\u0077ord=abc'},  # a literal backslash-u
    {'chap': 'CHAPPASSWORD=s3cret', 'n': 1.5, 't': True},
    {'x-auth-token': 'tok'},
    'auth_password: abc',
    'plain text',
    ['token=abc', {'secret': 'x'}],
    None,
    42,
    {'ids': {1, 2}, 'raw': b'bytes', 'r': range(2)},  # what JSON does not know as is
    {'auth': View({'password': 'hunter2'})},
    {'auth': Creds(password='hunter2')},
]


def oslo(value):
    if isinstance(value, dict):
        value = strutils.mask_dict_password(value)
    elif isinstance(value, str):
        value = strutils.mask_password(value)
    return json.dumps(value, default=str)


@pytest.mark.parametrize('value', VALUES, ids=[str(i) for i in range(len(VALUES))])
def test_dumps_masks_as_oslo_utils_does(value):
    assert dumps(value) == oslo(value)


def test_a_secret_never_reaches_the_text():
    for text in (dumps({'password': 'hunter2'}), dumps({'m': 'password=hunter2'}),
                 dumps({'a': {'auth_token': 'gAAAA-tok'}})):
        assert 'hunter2' not in text and 'gAAAA-tok' not in text

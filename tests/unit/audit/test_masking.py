"""Secrets never reach the store, whatever shape they arrive in."""
import json

from oslo_utils import strutils
import pytest

from attachworker.audit import masking

SECRET = 'S3cr3t-value-42'
FERNET = 'gAAAAABnQ1xYz0123456789abcdefghijklmnopqrstuv_-='


@pytest.mark.parametrize('text', [
    'password=%s' % SECRET,
    "auth_password='%s'" % SECRET,
    '{"auth_token": "%s"}' % SECRET,
    r'{\"chap_secret\": \"%s\", \"x\": 1}' % SECRET,      # JSON inside an envelope
    'Unauthorized: X-Auth-Token: %s' % SECRET,
    'x-subject-token=%s; next' % SECRET,
    'Authorization: Bearer %s' % SECRET,
    'request failed with token %s' % FERNET,
    'api_key: %s' % SECRET,
])
def test_secrets_in_text_are_masked(text):
    masked = masking.mask_text(text)
    assert SECRET not in masked and FERNET not in masked
    assert '***' in masked


@pytest.mark.parametrize('text', [
    'CinderUnavailable: 503 Service Unavailable',
    'Volume 5d77e0c4-1f1b-4c1e-9d0e-1e0b8c9f0a11 is in-use',
    '/dev/vdb',
])
def test_ordinary_text_is_left_alone(text):
    assert masking.mask_text(text) == text


def test_secret_keys_are_masked_anywhere_in_nested_data():
    data = {'volume_id': 'v1',
            'connection_info': {'data': {'auth_password': SECRET, 'target_iqn': 'iqn.x'}},
            'headers': [{'X-Auth-Token': SECRET}],
            'note': 'login with password=%s' % SECRET,
            'creds': {'credential': {'blob': SECRET}}}
    masked = masking.mask(data)
    assert SECRET not in json.dumps(masked)
    assert masked['volume_id'] == 'v1'
    assert masked['connection_info']['data']['target_iqn'] == 'iqn.x'
    assert data['connection_info']['data']['auth_password'] == SECRET  # input untouched


def test_non_string_values_under_secret_keys_are_masked():
    assert masking.mask({'password': 12345, 'token': ['a', 'b']}) == {
        'password': '***', 'token': '***'}


def test_the_fast_path_keyword_list_covers_every_oslo_utils_key():
    """Plain text is only skipped if no oslo.utils key can be in it."""
    for key in strutils._SANITIZE_KEYS:
        assert masking._KEYWORD.search(key), key


@pytest.mark.parametrize('word', ['password', 'passwd', 'passphrase', 'token', 'secret',
                                  'credential', 'api_key', 'api-key', 'apikey',
                                  'private_key', 'access-key', 'authorization'])
def test_the_fast_path_keyword_list_covers_every_key_word_of_ours(word):
    assert masking._KEY_VALUE.search(word + '=x')  # one of the words _KEY_VALUE masks
    assert masking._KEYWORD.search(word)


@pytest.mark.parametrize('text', ['a: b, c=d; "e": "f"', 'Failed: 503 (retry in 5s)'])
def test_text_with_separators_but_no_key_word_is_left_alone(text):
    assert masking.mask_text(text) == text


@pytest.mark.parametrize('key', ['configdrive', 'cephclusterfsid', 'rabbitcookie',
                                 'swifthashsuffix', 'AdminPass'])
def test_oslo_utils_key_names_are_masked_too(key):
    assert masking.mask({key: SECRET, 'x': {key: SECRET}}) == {key: '***',
                                                                'x': {key: '***'}}


def test_a_bare_fernet_token_value_is_masked():
    assert masking.mask({'mountpoint': FERNET}) == {'mountpoint': '***'}


@pytest.mark.parametrize('text,expected', [
    ('plain', 'plain'),
    ('compute-é-日本', 'compute-é-日本'),
    ('a\ud800b\udfff', 'a\\ud800b\\udfff'),
    ('nul\x00here', 'nul\\x00here'),
    ('\x00\udc80', '\\x00\\udc80'),
])
def test_storable_escapes_what_a_database_cannot_take(text, expected):
    assert masking.storable(text) == expected
    masking.storable(text).encode('utf-8')


def test_mask_row_masks_and_escapes_every_text_but_the_masked_ones():
    masked_json = json.dumps(masking.mask({'password': SECRET, 'host': 'compute-1'}))
    row = masking.mask_row({'reason': 'bad password=%s' % SECRET,
                            'event_type': 'x.y chap_secret=%s\ud800' % SECRET,
                            'excerpt': masked_json, 'size': 12, 'message_id': None},
                           masked=('excerpt',))
    assert row == {'reason': 'bad password=***', 'event_type': 'x.y chap_secret=***',
                   'excerpt': masked_json, 'size': 12, 'message_id': None}
    # masked_json again through mask_text would lose 'compute-1' (oslo.utils 10.2.0)
    assert json.loads(row['excerpt'])['host'] == 'compute-1'


def test_mask_row_escapes_before_masking():
    row = masking.mask_row({'publisher_id': 'p\ud800 password=%s' % SECRET})
    assert row == {'publisher_id': 'p\\ud800 password=***'}

"""The committed sample config is what oslo-config-generator produces now.

When this fails, run tools/generate-config and commit the result.
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_sample_config_is_current(tmp_path):
    out = tmp_path / 'sample.conf'
    subprocess.run([str(pathlib.Path(sys.executable).parent / 'oslo-config-generator'),
                    '--config-file',
                    str(ROOT / 'etc/attachworker/attachworker-config-generator.conf'),
                    '--output-file', str(out)], check=True, cwd=ROOT,
                   stderr=subprocess.DEVNULL)
    committed = (ROOT / 'etc/attachworker/attachworker.conf.sample').read_text()
    assert out.read_text() == committed, 'stale sample: run tools/generate-config'
    # every attachworker section is documented in it
    for section in ('[cinder]', '[service_user]', '[virt]', '[connector]', '[worker]',
                    '[upgrade_levels]', '[audit]'):
        assert section in committed
    assert '#control_exchange = attachworker' in committed


def test_the_thread_pool_and_prefetch_sizes_are_justified_beside_them():
    """Issue 9, goal 3: each of the two sizes carries attachworker's reasons, in the
    option's own comment block (not only the library's one-line help)."""
    committed = (ROOT / 'etc/attachworker/attachworker.conf.sample').read_text()
    for option, default in (('executor_thread_pool_size', 64),
                            ('rabbit_qos_prefetch_count', 64)):
        line = '#%s = %d' % (option, default)
        assert line in committed
        block = committed.split(line)[0].rsplit('\n\n', 1)[-1]   # its comment block
        assert '# attachworker:' in block, option

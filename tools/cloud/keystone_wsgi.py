"""gunicorn entry point for Keystone (tools/local-cloud).

Keystone no longer ships a ``keystone-wsgi-public`` script. Building the app parses
``sys.argv`` with oslo.config; under gunicorn that list holds gunicorn's own flags
and the worker dies with "unrecognized arguments". So the import sees a bare argv.
The config file comes from OS_KEYSTONE_CONFIG_FILES, set by tools/local-cloud.
"""
import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    from keystone.wsgi.api import application  # noqa: F401  (gunicorn looks it up)
finally:
    sys.argv = _argv

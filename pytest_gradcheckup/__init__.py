"""pytest plugin for gradcheckup: the ``gradcheckup`` fixture, the
``@pytest.mark.gradcheckup(...)`` marker, ``--gradcheckup-*`` options, a session JSON,
a terminal summary and gradient-profile baselines.

- ``plugin``: the pytest hooks and the fixture function (registered as ``pytest11``);
- ``session``: ``GradcheckupSession``, the plain state of one run (config, reports);
- ``fixture``: ``GradcheckupFixture``, what a test receives.

Importing this package must stay light: it never imports torch at import time.
"""

"""Shared pytest set-up.

Hypothesis: under CI (``CI`` set, as ``.ci/run`` has it) property tests run derandomized, so a
run is reproducible and a landing cannot fail on a new random draw; locally every run explores
new examples (and the failures it finds are replayed from .hypothesis/ until fixed).
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

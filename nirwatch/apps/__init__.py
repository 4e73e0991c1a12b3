"""Applications on top of the core and the services: the ``nirwatch`` command line, the demo,
and the commands that belong to no one service (broker, models, audit, predict).

This is the composition root: the only place that may import the services. The core (every
other ``nirwatch`` sub-package) never imports from here or from a service
(``tests/test_architecture.py``).
"""

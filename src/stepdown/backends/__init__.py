"""Backends: one interface (:mod:`.base`), one table of facts (:mod:`.registry`), one failure
boundary (:mod:`.failures`), and a module per backend.

Adding a backend is one module defining ``BACKEND`` (a :class:`.base.Backend` subclass) plus one
:class:`.registry.BackendInfo` entry; see "Adding a backend" in the docs.
"""

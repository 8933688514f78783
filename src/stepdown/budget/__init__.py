"""The host budget: worker slots and memory reservations shared by every instance on one host.

:mod:`.settings` is a profile's ``budget`` table, typed; :mod:`.slots` the slot files (opened
safely, locked with ``flock``); :mod:`.grant` the slots one rung holds; :mod:`.status` who holds
what; :mod:`.budget` acquiring slots and reading reservations.
"""

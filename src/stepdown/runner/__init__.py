"""Running: the engine's state machine and what it moves around.

:mod:`.engine` climbs the ladder; :mod:`.flights` holds batches and where they come from;
:mod:`.delivery` hands outcomes to the caller; :mod:`.decide` says what a failure means;
:mod:`.grants` takes host-budget slots; :mod:`.batch` runs a batch (in a worker: standard
library only); :mod:`.shipping` says what travels with it; :mod:`.timeouts` stops tasks that
ran over ``task_timeout``; :mod:`.isolation` runs suspects alone; :mod:`.pools` keeps warm
executors; :mod:`.report` records what happened; :mod:`.progress` draws the bar.

This package's ``__init__`` imports nothing: a worker that unpickles ``run_batch`` pays only for
:mod:`.batch`.
"""

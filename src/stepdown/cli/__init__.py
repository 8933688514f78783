"""The ``stepdown`` command: :mod:`.main` parses and dispatches; :mod:`.run`, :mod:`.doctor` and
:mod:`.bench` are its subcommands (``plan`` and ``demo`` are a few lines in :mod:`.main`)."""

"""The search backends and the Optuna study they share.

- :mod:`.backend`: the :class:`~.backend.Backend` interface and the helpers both backends share;
- :mod:`.optuna_backend` (worker processes) and :mod:`.ray_backend` (Ray Tune): the backends;
- :mod:`.objective`: the trial function both run; :mod:`.space`: the search space's suggestions;
- :mod:`.study`: the study (creation, samplers, heartbeats); :mod:`.storage`: where it lives.

What the command line orchestrates with them (run a search, join one, status) is in
:mod:`ranksearch.app`. Nothing here imports the training stack at import time.
"""

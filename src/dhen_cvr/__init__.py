"""dhen-cvr: multi-task DHEN conversion-rate prediction (WWW Companion 2025), end to end.

Packages are layers (README "Extending"): ``data`` -> ``model`` -> ``config`` -> ``runtime``
-> ``train`` / ``eval`` -> ``pipeline`` -> ``study`` / ``search`` / ``serve``; ``cli`` is a thin
typer layer over their public functions.
"""

__version__ = "0.1.0"

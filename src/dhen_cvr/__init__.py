"""dhen-cvr: multi-task DHEN conversion-rate prediction (WWW Companion 2025), end to end.

Packages follow the pipeline: ``data`` -> ``model`` -> ``train`` -> ``eval`` -> ``search``
-> ``serve``; ``cli`` is a thin typer layer over their public functions.
"""

__version__ = "0.1.0"

"""``python -m dhen_cvr.cli`` (used under ``torchrun``)."""

from dhen_cvr.cli import main

main()

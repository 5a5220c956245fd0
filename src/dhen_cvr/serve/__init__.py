"""Serving (DESIGN section 7): a self-contained exported artefact, request-level scoring
(one user's side computed once against N candidates), an HTTP service and batch scoring.

Public surface: :func:`export_artefact`, :func:`export_program` (one program, for your own
artefact layout), :func:`load_artefact`, :func:`load_serving_model`,
:class:`ServingModel`, :func:`predict`, and (needing the ``serve`` extra: FastAPI,
uvicorn) :func:`create_app`, :func:`run_server` from :mod:`dhen_cvr.serve.app`.
"""

from dhen_cvr.serve.artefact import (
    ServingModel,
    export_artefact,
    export_program,
    load_artefact,
    load_serving_model,
)
from dhen_cvr.serve.predict import predict

__all__ = [
    "ServingModel",
    "export_artefact",
    "export_program",
    "load_artefact",
    "load_serving_model",
    "predict",
]

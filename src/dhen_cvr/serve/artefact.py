"""The serving artefact: a self-contained folder that scores without the training code's
configs (DESIGN section 7)::

    ART/request.pt2    torch.export program: one user's sequences x N candidates -> N x H
                       (CVRModel.score_candidates: the user side once per request)
    ART/rows.pt2       torch.export program: B independent rows -> B x H (batch scoring)
    ART/spec.yaml      the model's feature spec, each sequence's max_len set to the model's
                       cut (what the request decoder and the batch reader cut to)
    ART/metadata.json  format and model version, served heads, calibration, input layout,
                       source checkpoint, torch version, sha256 of every file

Both programs are :class:`~dhen_cvr.model.cvr_model.ServedCVRModel` with
``probabilities=True``: served heads only (``serve: false`` heads such as CTR dropped),
min-max statistics inside (buffers), calibrated full-population probabilities
``r p_s / (1 - (1 - r) a_s)`` (the exact down-sampling correction). Raw ids are mapped and
time features computed outside the graph by the data layer's own code
(:mod:`dhen_cvr.data.mapping`, :mod:`dhen_cvr.data.decode`) from ``spec.yaml``, exactly as
the training reader does. Dynamic dimensions: the number of candidates (rows) and every
sequence's length (1 .. its cut; an empty sequence is one padding item with length 0).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import dhen_cvr
from dhen_cvr.data.spec import FeatureSpec, load_spec
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.cvr_model import CVRModel, ServedCVRModel
from dhen_cvr.runtime.checkpoint import TrainedModel, load_trained_model

__all__ = [
    "ARTEFACT_FORMAT",
    "ServingModel",
    "export_artefact",
    "export_program",
    "load_artefact",
    "load_serving_model",
    "served_spec",
]

ARTEFACT_FORMAT = "dhen-cvr-artefact/1"
_PROGRAMS = ("request.pt2", "rows.pt2")
_MAX_ROWS = 1 << 20


def served_spec(model: CVRModel) -> FeatureSpec:
    """The model's spec with each sequence's ``max_len`` set to the model's cut, so the
    decoder keeps exactly the items the model uses (the time features of kept items do
    not depend on the cut: an item's gap is to its predecessor in the full sequence)."""
    cuts = model.sequence_max_lens
    features = [
        f.model_copy(update={"max_len": cuts[f.name]}) if f.name in cuts else f
        for f in model.spec.features
    ]
    return model.spec.model_copy(update={"features": features})


@dataclass
class ServingModel:
    """What the server and batch scoring use, from an artefact or straight from a run.

    ``request(*inputs) -> N x H`` takes the one-user layout of
    :class:`ServedCVRModel` (``one_user=True``), ``rows(*inputs) -> B x H`` the per-row
    layout; ``H`` = ``heads`` (served heads, spec order), calibrated probabilities.
    """

    spec: FeatureSpec
    heads: list[str]
    metadata: dict[str, Any]
    request: Callable[..., Tensor]
    rows: Callable[..., Tensor]

    @property
    def model_version(self) -> str:
        return str(self.metadata["model_version"])


def _example_inputs(spec: FeatureSpec, one_user: bool) -> tuple[Tensor, ...]:
    """Random inputs in :func:`~dhen_cvr.model.cvr_model.flat_inputs` layout (export
    only); every dynamic size differs from the others and is >= 2 (no specialisation)."""
    g = torch.Generator().manual_seed(0)
    rows = len(spec.sequences) + 3
    categorical = [torch.randint(1, f.num_rows, (rows,), generator=g) for f in spec.categorical]
    out: list[Tensor] = [
        torch.rand(rows, len(spec.dense), generator=g),
        torch.randn(rows, sum(f.dim for f in spec.pretrained), generator=g),
        torch.stack(categorical, 1) if categorical else torch.zeros(rows, 0, dtype=torch.long),
    ]
    b = 1 if one_user else rows
    for i, s in enumerate(spec.sequences):
        t = min(s.max_len, 2 + i)
        ids = [torch.randint(1, f.num_rows, (b, t), generator=g) for f in s.fields]
        out += [torch.stack(ids, -1), torch.rand(b, t, 2, generator=g) * 10]
        out.append(torch.full((b,), t, dtype=torch.long))
    return tuple(out)


def _dynamic_shapes(spec: FeatureSpec, one_user: bool) -> list[Any]:
    n = torch.export.Dim("candidates" if one_user else "rows", min=1, max=_MAX_ROWS)
    per_sequence: list[Any] = []
    for s in spec.sequences:
        t = torch.export.Dim(f"T_{s.name}", min=1, max=s.max_len) if s.max_len > 1 else None
        if one_user:
            seq: dict[int, Any] = {1: t} if t is not None else {}
            per_sequence += [seq, seq, None]
        else:
            seq = {0: n, 1: t} if t is not None else {0: n}
            per_sequence += [seq, seq, {0: n}]
    return [{0: n}, {0: n}, {0: n}, tuple(per_sequence)]


def _served(trained: TrainedModel, one_user: bool) -> ServedCVRModel:
    """The served probabilities of ``trained``, in the formulation it was trained in."""
    return ServedCVRModel(
        trained.model,
        probabilities=True,
        one_user=one_user,
        esmm_click_head=trained.config.loss.esmm_scale_head,
    ).eval()


def _symbolic_tracing() -> contextlib.AbstractContextManager[Any]:
    """Settings for tracing the programs: no fake-tensor dispatch cache.

    With dynamic row and sequence dimensions, building and reading that cache's entries
    costs more than it saves: tracing both programs of ``tiny`` on the quickstart spec is
    1.6-1.9x faster without it, and the graphs are the same
    (``python -m benchmarks.bench_export``). A torch without the setting traces as is."""
    config = torch._dynamo.config
    if not hasattr(config, "fake_tensor_cache_enabled"):
        return contextlib.nullcontext()
    return config.patch(fake_tensor_cache_enabled=False)


def export_program(served: ServedCVRModel, spec: FeatureSpec) -> torch.export.ExportedProgram:
    """``torch.export`` of ``served`` (its ``one_user`` layout) with a dynamic number of
    rows / candidates and a dynamic length (1 .. ``max_len``) per sequence of ``spec``."""
    inputs = _example_inputs(spec, served.one_user)
    with warnings.catch_warnings(), torch.no_grad(), _symbolic_tracing():
        warnings.simplefilter("ignore")
        return torch.export.export(
            served,
            inputs,
            dynamic_shapes=_dynamic_shapes(spec, served.one_user),
            strict=False,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _metadata(trained: TrainedModel, spec: FeatureSpec, files: dict[str, str]) -> dict[str, Any]:
    model = trained.model
    ckpt = trained.checkpoint
    return {
        "format": ARTEFACT_FORMAT,
        "model_version": f"step-{ckpt.progress.step}-{files['request.pt2'][:12]}",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dhen_cvr_version": dhen_cvr.__version__,
        "torch_version": torch.__version__,
        "source": {
            "checkpoint": str(ckpt.path.resolve()),
            "step": ckpt.progress.step,
            "examples_seen": ckpt.progress.examples_seen,
        },
        "heads": model.served_head_names,
        "trained_heads": model.head_names,
        "formulation": trained.config.loss.formulation,
        "output": "calibrated full-population probability per served head: "
        "r p_s / (1 - (1 - r) a_s), a_s the any-keep-label head (DESIGN 10); "
        "p_s = sigmoid(click) * sigmoid(cvr) in the esmm formulation",
        "negative_rate": spec.sampling.negative_rate,
        "keep_labels": trained.spec.keep_label_names,
        "sequence_max_lens": model.sequence_max_lens,
        "inputs": {
            "dense": [f.name for f in spec.dense],
            "pretrained": {f.name: f.dim for f in spec.pretrained},
            "categorical": [f.name for f in spec.categorical],
            "sequences": {s.name: [f.name for f in s.fields] for s in spec.sequences},
        },
        "model_config": trained.config.model.model_dump(mode="json"),
        "files": files,
    }


def export_artefact(
    run: str | Path, out: str | Path, on_program: Callable[[str], None] | None = None
) -> Path:
    """Export the newest checkpoint of ``run`` (or a checkpoint folder) to ``out`` (a new
    or empty folder, written atomically: a temporary folder renamed into place).
    ``on_program(name)`` is called before each program is traced (tens of seconds each)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DhenCvrError(f"artefact folder {out} exists and is not empty; choose another --out")
    trained = load_trained_model(run, "cpu")
    spec = served_spec(trained.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        for name, one_user in zip(_PROGRAMS, (True, False), strict=True):
            if on_program is not None:
                on_program(name)
            torch.export.save(export_program(_served(trained, one_user), spec), tmp / name)
        spec.save(tmp / "spec.yaml")
        files = {name: _sha256(tmp / name) for name in (*_PROGRAMS, "spec.yaml")}
        metadata = _metadata(trained, spec, files)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _no_grad(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def call(*inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return fn(*inputs)

    return call


class _Program:
    """One exported program of an artefact, loaded on first use (or by :meth:`load`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._module: Callable[..., Tensor] | None = None

    def load(self) -> _Program:
        if self._module is None:
            self._module = torch.export.load(self.path).module()
        return self

    def __call__(self, *inputs: Tensor) -> Tensor:
        module = self.load()._module
        assert module is not None
        with torch.inference_mode():
            return module(*inputs)


def load_artefact(
    path: str | Path, programs: tuple[str, ...] = ("request", "rows")
) -> ServingModel:
    """Load an exported artefact (checks its format and every file's sha256); the named
    ``programs`` are loaded now, the others on first use (the server needs ``request``
    only, batch scoring ``rows`` only)."""
    path = Path(path)
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise DhenCvrError(f"{path} is not a dhen-cvr artefact (no metadata.json)")
    metadata = json.loads(meta_path.read_text())
    if metadata.get("format") != ARTEFACT_FORMAT:
        raise DhenCvrError(
            f"{path}: artefact format {metadata.get('format')!r}, expected {ARTEFACT_FORMAT!r}"
        )
    for name, digest in metadata["files"].items():
        if not (path / name).is_file():
            raise DhenCvrError(f"artefact {path} is incomplete: missing {name}")
        if _sha256(path / name) != digest:
            raise DhenCvrError(f"artefact {path}: {name} does not match its sha256 in metadata")
    request, rows = (_Program(path / name) for name in _PROGRAMS)
    for name, program in (("request", request), ("rows", rows)):
        if name in programs:
            program.load()
    return ServingModel(
        spec=load_spec(path / "spec.yaml"),
        heads=list(metadata["heads"]),
        metadata=metadata,
        request=request,
        rows=rows,
    )


def load_serving_model(run: str | Path) -> ServingModel:
    """The eager equivalent of an artefact, straight from a run (or checkpoint) folder."""
    trained = load_trained_model(run, "cpu")
    model = trained.model
    spec = served_spec(model)
    return ServingModel(
        spec=spec,
        heads=model.served_head_names,
        metadata={
            "format": "eager",
            "model_version": f"step-{trained.checkpoint.progress.step}-eager",
            "source": {"checkpoint": str(trained.checkpoint.path.resolve())},
            "heads": model.served_head_names,
            "sequence_max_lens": model.sequence_max_lens,
        },
        request=_no_grad(_served(trained, one_user=True)),
        rows=_no_grad(_served(trained, one_user=False)),
    )

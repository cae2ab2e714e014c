"""The /ui routes: one template per page; the data come from the /v1 API in the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from service.job_schemas import BUILTIN_DATASETS, CONDITIONAL_BUILTIN_DATASETS
from service.settings import Settings

__all__ = ["install_console", "router"]

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


# The API key lives in the page's sessionStorage: only the console's own scripts may run, no
# other site may frame the page, and no URL of it leaks through a Referer header.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _size(n: int) -> str:
    """Bytes as people read them: 256 MiB, 64 KiB, 1000 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _page(request: Request, template: str, page: str, **context: Any) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    limits = {
        "max_csv_rows": settings.max_csv_rows,
        "max_upload": _size(settings.max_upload_bytes),
        "max_samples": settings.max_samples,
        "max_batch": settings.max_batch,
    }
    return templates.TemplateResponse(
        request, template, {"page": page, "limits": limits, **context}, headers=_HEADERS
    )


@router.get("", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    """Every model in the store (latest version, dimension, test NLL, created)."""
    return _page(request, "models.html", "models")


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    request: Request,
    name: Annotated[str, PathParam(max_length=256)],
    version: Annotated[int | None, Query(ge=1, le=2**31)] = None,
) -> HTMLResponse:
    """One version of a model: summary, metrics, plots, version picker, scoring, sampling,
    transport."""
    return _page(request, "model.html", "model", name=name, version=version)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """The form to start a training job, and the job list."""
    builtins = sorted(BUILTIN_DATASETS.items())
    conditional = sorted((k, d) for k, (d, _) in CONDITIONAL_BUILTIN_DATASETS.items())
    return _page(request, "jobs.html", "jobs", builtins=builtins, conditional=conditional)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: Annotated[str, PathParam(max_length=256)]) -> HTMLResponse:
    """One job, its progress followed live from the API's server-sent events."""
    return _page(request, "job.html", "job", job_id=job_id)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    """Upload, list and delete data sets."""
    return _page(request, "datasets.html", "datasets")


def install_console(app: FastAPI) -> None:
    """Serve the console at /ui (pages) and /ui/static (its script and style sheet)."""
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="console-static")
    app.include_router(router)

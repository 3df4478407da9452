"""Where things live in `kbot web`, for its own pages and for reports that link to them.

Reports call `series_url(config.report.web_url, series_id)` (or `job_url` / `bisect_url`):
with no `[report] web_url` configured they get "" and print no link.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode


def series_path(series_id: int) -> str:
    return f"/series/{series_id}"


def job_path(job_id: int) -> str:
    return f"/jobs/{job_id}"


def bisect_path(job_id: int) -> str:
    return f"/bisect/{job_id}"


def test_path(test: str) -> str:
    return "/tests/history?" + urlencode({"name": test})


def console_path(job_id: int, boot_key: str, run: int) -> str:
    return f"/jobs/{job_id}/console?" + urlencode({"boot": boot_key, "run": run})


def artifact_path(job_id: int, rel: str, *, raw: bool = False) -> str:
    return f"/jobs/{job_id}/{'raw' if raw else 'files'}/" + quote(rel)


def _absolute(web_url: str, path: str) -> str:
    if not web_url:
        return ""
    return web_url.rstrip("/") + path


def series_url(web_url: str, series_id: int) -> str:
    """The series page (patch x test matrix) at `web_url`; "" when web_url is ""."""
    return _absolute(web_url, series_path(series_id))


def job_url(web_url: str, job_id: int) -> str:
    """A job's page (steps, reports, artifacts); "" when web_url is ""."""
    return _absolute(web_url, job_path(job_id))


def bisect_url(web_url: str, job_id: int) -> str:
    """A bisection job's page (tested commits, posterior); "" when web_url is ""."""
    return _absolute(web_url, bisect_path(job_id))

"""The page a clinician opens at `/`: enter the API token once, paste a note, see the label, the
probabilities as bars, the prediction set (or `refer`), the words that drove the prediction, and
mark the answer right or wrong (with the right label and an optional comment).

The page is three static files shipped in the package (static/: HTML, CSS, vanilla JavaScript; no
front-end build step), served without a token: they hold no data. Everything the page shows comes
from the API (/predict, /explain, /feedback, /health), called by the script with the bearer token the
clinician typed, so the page has exactly the API's auth and limits. The token is kept in the tab's
sessionStorage (gone when the tab closes), never in a cookie or the URL.

Every file is served with a strict Content-Security-Policy: scripts only from this origin as files
(no inline script, no eval), styles only from this origin, requests only to this origin, no frames,
no forms posting elsewhere. The script writes text with textContent, never innerHTML, so a note
cannot inject markup.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
         "icon.svg": "image/svg+xml"}

router = APIRouter()


def static(name: str) -> bytes:
    return resources.files("medsweep.serving").joinpath("static", name).read_bytes()


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return Response(static("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in FILES:  # a fixed list: no path from the URL reaches the file system
        raise HTTPException(status_code=404, detail="not found")
    return Response(static(name), media_type=FILES[name], headers=HEADERS)

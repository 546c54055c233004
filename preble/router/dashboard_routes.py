"""The operator dashboard's page and its JSON API (`/dashboard`, `/dashboard/api/...`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ..core.routing.base import RoutingPolicy
from . import dashboard as dash
from .config import DashboardConfig
from .workers import WorkerPool

DASHBOARD_PAGE = (Path(__file__).parent / "static" / "dashboard.html").read_text()


def dashboard_routes(cfg: DashboardConfig, pool: WorkerPool, policy: RoutingPolicy, decisions: deque[dict],
                     timeline: dash.Timeline, decode: Callable[[list[int]], str]) -> APIRouter:
    routes = APIRouter()

    @routes.get("/dashboard", include_in_schema=False)
    async def dashboard_page():
        return HTMLResponse(DASHBOARD_PAGE)

    @routes.get("/dashboard/api/replicas")
    async def dashboard_replicas():
        return {"policy": policy.name, "replicas": dash.replicas(pool, policy)}

    @routes.get("/dashboard/api/prefixes")
    async def dashboard_prefixes(limit: int = 20):
        return dash.hot_prefixes(policy, decode, cfg, max(0, limit))

    @routes.get("/dashboard/api/decisions")
    async def dashboard_decisions(limit: int = 50):
        return {"decisions": list(decisions)[-max(0, min(limit, cfg.max_decisions)):][::-1]}

    @routes.get("/dashboard/api/timeline")
    async def dashboard_timeline():
        return {"bucket_s": cfg.bucket_s, "series": timeline.series()}

    return routes

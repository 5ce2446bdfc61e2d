"""Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: requests, latencies, batch sizes, queue depths, model states."""
    return Response(metrics.render(), media_type=metrics.content_type)

"""One thin router per resource: HTTP in, calls to the registry and predictor, HTTP out."""

from service.api import activations, docs, health, metrics, models, page, predict, v2

# hot routes match first
ROUTERS = (
    predict.router,
    v2.router,
    health.router,
    models.router,
    activations.router,
    metrics.router,
    page.router,
    docs.router,
)

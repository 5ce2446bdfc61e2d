"""One thin router per resource: HTTP in, calls to the registry and predictor, HTTP out."""

from service.api import health, metrics, models, predict

ROUTERS = (predict.router, health.router, models.router, metrics.router)  # hot routes match first

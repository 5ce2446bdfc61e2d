"""One thin router per resource: HTTP in, calls to the registry and predictor, HTTP out."""

from service.api import activations, docs, health, metrics, models, page, predict

# hot routes match first
ROUTERS = (predict.router, health.router, models.router, activations.router, metrics.router, page.router, docs.router)

"""The Python client of the prediction service, and the batch-scoring command.

Importing this package needs httpx, numpy and Pillow only (never TensorFlow), so scripts
on machines without the model stack can use it::

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.predict("digits", ["a.png", "b.png"], top_k=3)
        for prediction in result.predictions:
            print(prediction.label, prediction.confidence)
        arrays = client.activations(result.predictions[0].id, layers=["conv1"])

`python -m service.client score --url URL --model NAME INPUT... --out results.csv` scores
files, folders, globs or path lists (see `service.client.score`).
"""

from service.client.api import AsyncClient, Client, RetryPolicy
from service.client.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceConnectionError,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from service.client.payloads import ImageInput
from service.client.results import ClassScore, Health, ModelInfo, Prediction, PredictResult

__all__ = [
    "AsyncClient",
    "BadRequest",
    "ClassScore",
    "Client",
    "Forbidden",
    "GatewayError",
    "Health",
    "ImageInput",
    "InvalidInput",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "PredictResult",
    "Prediction",
    "RetryPolicy",
    "ServerError",
    "ServiceConnectionError",
    "ServiceError",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]

"""surgeserve's client: predictions, bulk predictions and jobs (sync and asyncio), and the
`ssc` command. Needs httpx and tqdm only."""

from surgeserve_client.aio import AsyncClient
from surgeserve_client.client import Client
from surgeserve_client.errors import ApiError, ClientError, InputError, JobFailed
from surgeserve_client.inputs import Item, read_items
from surgeserve_client.plan import Submission
from surgeserve_client.retry import RetryPolicy
from surgeserve_client.types import (
    ItemError,
    Job,
    JobList,
    JobResult,
    LabelScore,
    Limits,
    Prediction,
)

__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "InputError",
    "Item",
    "ItemError",
    "Job",
    "JobFailed",
    "JobList",
    "JobResult",
    "LabelScore",
    "Limits",
    "Prediction",
    "RetryPolicy",
    "Submission",
    "read_items",
]

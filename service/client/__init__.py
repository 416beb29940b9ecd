"""A small client for the DQE gRPC service (one server or several replicas), used by ``dqe score --server``.

>>> with DQEClient("localhost:50051", deadline_s=60) as client:      # doctest: +SKIP
...     remote = client.score_files("t1c.nii.gz", "t1.nii.gz", "t2.nii.gz", "flair.nii.gz", "seg.nii.gz")
...     remote.mean_stars

Several replicas: give a comma-separated list (``10.0.0.5:50051,10.0.0.6:50051``) or a resolver target
(``dns:///dqe-headless.ns.svc:50051``, which resolves to every address behind the name). The channel uses
gRPC's ``round_robin`` policy (one connection per replica, calls spread over those that are up) and, with
several replicas, client-side health checking (a replica whose ``grpc.health.v1`` status is not SERVING, i.e.
warming up or draining, gets no new calls); see :func:`channel_target`.

Calls retry on UNAVAILABLE (server starting, warming up, draining or gone) and on a CANCELLED the server sent
(a shutdown past its grace) with exponential backoff inside one overall deadline; with ``round_robin`` the
retry goes to a replica that is still up. All four RPCs are idempotent (scoring has no side effect), so a retry
can never change a result; each call still returns exactly once. A ``ScoreBatch`` stream that breaks that way
is resumed on another replica with only the items not yet answered (see :meth:`DQEClient.score_batch`). Server errors come back as the same
:class:`dqe.models.errors.DQEError` subclasses local scoring raises (``code``, ``field`` and ``message``
preserved). Importing this module loads neither torch nor onnxruntime, nibabel or scipy.
"""

from dqe.service.client.errors import RemoteError, error_from_rpc
from dqe.service.client.results import RemoteScore
from dqe.service.client.sdk import DQEClient
from dqe.service.client.targets import ChannelTarget, channel_target, service_config

__all__ = [
    "ChannelTarget",
    "DQEClient",
    "RemoteError",
    "RemoteScore",
    "channel_target",
    "error_from_rpc",
    "service_config",
]

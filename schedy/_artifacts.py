"""Artifacts: checkpoint files a schedy server keeps, named alike on every worker.

Workers that share no file system hand checkpoints to each other through the
server they already talk to. What client (``storage._http``), server
(``server._artifacts``) and integrations (``integrations._files``) must agree
on lives here, below all three:

- the name a job's results give an artifact, ``schedy://<experiment>/<job
  id>/<file>`` (each part percent-encoded): it says *what* the file is, not
  *where* a server is, so it stays true when the server moves, sits behind a
  load balancer or runs as several replicas, and every worker resolves it
  against the store it claimed the job from;
- the rules for the parts (:func:`check_filename`, :func:`check_job_id`):
  nothing that could climb out of the server's folder;
- the routes and the record of a stored artifact (:class:`ArtifactInfo`);
- which server a job came from (:func:`remember`, :func:`client_for`): the
  integrations see a job id (``torch.save(job, ...)`` passes ``job.id`` to the
  path helpers), and the HTTP client notes the jobs it hands out, so that id
  is enough to find the server.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple, Protocol
from urllib.parse import quote, unquote

__all__ = [
    "ARTIFACTS_PATH",
    "ARTIFACT_PATH",
    "ARTIFACT_STORE_PATH",
    "FILENAME_PATTERN",
    "JOB_ID_PATTERN",
    "SCHEME",
    "SHA256_PATTERN",
    "ArtifactClient",
    "ArtifactInfo",
    "ArtifactName",
    "artifact_url",
    "check_filename",
    "check_job_id",
    "client_for",
    "etag",
    "is_artifact_url",
    "is_sha256",
    "parse_artifact_url",
    "remember",
]

#: The scheme of an artifact's name in a job's results.
SCHEME = "schedy"
_PREFIX = SCHEME + "://"
#: One artifact (GET, HEAD, PUT, DELETE), named by query parameters like every
#: route: an experiment's name may hold any character, ``/`` too.
ARTIFACT_PATH = "/artifact"
#: An experiment's artifacts (GET).
ARTIFACTS_PATH = "/artifacts"
#: Whether the server keeps artifacts, and its size limit (GET).
ARTIFACT_STORE_PATH = "/artifact-store"

#: What an artifact's file name, a job id that may name one and a hash must be,
#: whole (the server's OpenAPI document states the same, anchored).
FILENAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}"
JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
SHA256_PATTERN = r"[0-9a-f]{64}"
_FILENAME = re.compile(FILENAME_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
_SHA256 = re.compile(SHA256_PATTERN)


class ArtifactName(NamedTuple):
    """What a ``schedy://`` name names."""

    experiment: str
    job_id: str
    filename: str


class ArtifactInfo(NamedTuple):
    """A stored artifact: its job, its file name, its size in bytes and its SHA-256 (hex)."""

    job_id: str
    filename: str
    size: int
    sha256: str


def check_filename(filename: object) -> str:
    """An artifact's file name: letters, digits and ``._+-``, not starting with a dot.

    No separator and no leading dot, so it can never name a folder above its
    own (``..``) or a hidden file; ValueError saying so otherwise."""
    if not isinstance(filename, str) or not _FILENAME.fullmatch(filename):
        raise ValueError(
            f"an artifact's file name must be 1 to 200 letters, digits or '._+-', not starting "
            f"with a dot or holding a separator, not {filename!r}"
        )
    return filename


def check_job_id(job_id: object) -> str:
    """A job id as it may name an artifact's folder (what the stores hand out)."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"{job_id!r} is not a job id that can name an artifact")
    return job_id


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a SHA-256 in lowercase hex."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


def etag(sha256: str) -> str:
    """The HTTP entity tag of an artifact: its SHA-256, quoted (``If-Range`` compares it)."""
    return f'"{sha256}"'


def is_artifact_url(path: object) -> bool:
    """Whether ``path`` is a ``schedy://`` artifact name."""
    return isinstance(path, str) and path.startswith(_PREFIX)


def artifact_url(experiment: str, job_id: str, filename: str) -> str:
    """``schedy://<experiment>/<job id>/<file>``, each part percent-encoded."""
    check_job_id(job_id)
    check_filename(filename)
    return f"{_PREFIX}{quote(experiment, safe='')}/{job_id}/{filename}"


def parse_artifact_url(url: str) -> ArtifactName:
    """The parts of a ``schedy://`` name; ValueError for anything else."""
    if not is_artifact_url(url):
        raise ValueError(f"{url!r} is not an artifact name ({_PREFIX}<experiment>/<job>/<file>)")
    parts = url[len(_PREFIX) :].split("/")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"{url!r} is not an artifact name ({_PREFIX}<experiment>/<job>/<file>)")
    return ArtifactName(unquote(parts[0]), check_job_id(parts[1]), check_filename(parts[2]))


class ArtifactClient(Protocol):
    """What the integrations need of a store that keeps artifacts (the HTTP client)."""

    @property
    def url(self) -> str: ...

    def keeps_artifacts(self) -> bool: ...

    def upload_artifact(
        self, experiment: str, job_id: str, filename: str, path: str, sha256: str
    ) -> ArtifactInfo: ...

    def artifact_info(self, experiment: str, job_id: str, filename: str) -> ArtifactInfo | None: ...

    def download_artifact(
        self, experiment: str, job_id: str, filename: str, target: str, expected: ArtifactInfo
    ) -> None: ...


# -- which server a job came from ------------------------------------------
#: Jobs remembered at most: far more than a process runs at once.
_REMEMBERED = 4096
_lock = threading.Lock()
_jobs: OrderedDict[str, tuple[weakref.ref[ArtifactClient], str]] = OrderedDict()
_experiments: dict[str, weakref.ref[ArtifactClient]] = {}


def remember(job_id: str, experiment: str, client: ArtifactClient) -> None:
    """Note that ``client`` handed out job ``job_id`` of ``experiment`` in this process."""
    with _lock:
        reference = weakref.ref(client)
        _jobs[job_id] = (reference, experiment)
        _jobs.move_to_end(job_id)
        while len(_jobs) > _REMEMBERED:
            _jobs.popitem(last=False)
        _experiments[experiment] = reference
        if len(_experiments) > _REMEMBERED:
            _experiments.clear()
            _experiments[experiment] = reference


def client_for(job_id: str, experiment: str | None = None) -> tuple[ArtifactClient, str] | None:
    """The store that handed out job ``job_id`` here and the job's experiment, if a
    schedy server did (and its client is still open); failing that, the one that last
    handed out a job of ``experiment`` (a parent's checkpoint, claimed elsewhere); else None."""
    with _lock:
        entry = _jobs.get(job_id)
        if entry is None and experiment is not None and experiment in _experiments:
            entry = (_experiments[experiment], experiment)
    if entry is None:
        return None
    client = entry[0]()
    return None if client is None else (client, entry[1])

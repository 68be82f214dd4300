"""boto3 clients for one account and region, the API call counter, and error wording.

boto3 is imported here, inside functions, so that a trapline without an AWS
collector never loads it.  Everything in this module blocks: the collector
calls it from a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trapline.collectors.aws.settings import AwsSettings

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_emr import EMRClient
    from mypy_boto3_emr_serverless import EMRServerlessClient
    from mypy_boto3_glue import GlueClient
    from mypy_boto3_sts import STSClient

log = logging.getLogger(__name__)

# IAM action prefix per boto3 service name (CloudWatch signs as "monitoring",
# so the signing name cannot be used).
IAM_PREFIX = {
    "emr": "elasticmapreduce",
    "emr-serverless": "emr-serverless",
    "glue": "glue",
    "cloudwatch": "cloudwatch",
    "sts": "sts",
}
# Re-assume the role this long before its credentials expire.
_ROLE_REFRESH_MARGIN = 300.0


class ApiCalls(Counter[str]):
    """Calls per IAM action (``glue:GetJobRuns``), fed by a botocore event hook.

    Counted once per API call, not per HTTP attempt: retries are botocore's.
    """

    def watch(self, client: Any) -> None:
        service = client.meta.service_model.service_name
        prefix = IAM_PREFIX.get(service, service)

        def count(model: Any, **_: Any) -> None:
            self[f"{prefix}:{model.name}"] += 1

        # before-parameter-build fires for every call, also when a Stubber answers it.
        client.meta.events.register("before-parameter-build", count)


@dataclass(slots=True)
class Clients:
    emr: EMRClient
    emr_serverless: EMRServerlessClient
    glue: GlueClient
    cloudwatch: CloudWatchClient
    sts: STSClient  # whose account the clients act in (Glue tags need the job's ARN)
    expires: float | None = None  # epoch seconds of assumed-role credentials


def make_session(settings: AwsSettings, region: str, calls: ApiCalls) -> tuple[Any, Any, float | None]:
    """A boto3 session (assuming the role if configured), the client config, and when it expires."""
    # Imported here: boto3 is loaded only when an AWS collector is configured.
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415
    from botocore.exceptions import NoCredentialsError  # noqa: PLC0415

    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        user_agent_extra="trapline",
    )
    # Profile, environment, shared files, instance or task role: boto3's chain.
    session = boto3.Session(profile_name=settings.profile, region_name=region)
    if session.get_credentials() is None:
        raise NoCredentialsError()  # once here, rather than from every call of the cycle
    expires: float | None = None
    if settings.role_arn:
        sts = session.client("sts", config=config, endpoint_url=settings.endpoint_url)
        calls.watch(sts)
        extra: dict[str, Any] = {}
        if settings.external_id is not None:
            extra["ExternalId"] = settings.external_id.reveal()
        assumed = sts.assume_role(
            RoleArn=settings.role_arn, RoleSessionName=settings.role_session_name, **extra
        )["Credentials"]
        session = boto3.Session(
            aws_access_key_id=assumed["AccessKeyId"],
            aws_secret_access_key=assumed["SecretAccessKey"],
            aws_session_token=assumed["SessionToken"],
            region_name=region,
        )
        expires = assumed["Expiration"].timestamp()
        log.info("%s: assumed role %s", settings.name, settings.role_arn)
    return session, config, expires


def make_clients(settings: AwsSettings, calls: ApiCalls) -> Clients:
    """Build clients from the standard credential chain, assuming a role if configured."""
    session, config, expires = make_session(settings, settings.region, calls)

    def client(service: str) -> Any:
        made = session.client(service, config=config, endpoint_url=settings.endpoint_url)
        calls.watch(made)
        return made

    return Clients(
        emr=client("emr"),
        emr_serverless=client("emr-serverless"),
        glue=client("glue"),
        cloudwatch=client("cloudwatch"),
        sts=client("sts"),
        expires=expires,
    )


def needs_refresh(clients: Clients, now: float | None = None) -> bool:
    return expiring(clients.expires, now)


def expiring(expires: float | None, now: float | None = None) -> bool:
    """Whether credentials that expire at ``expires`` (None: never) are due for renewal."""
    if expires is None:
        return False
    return (now if now is not None else time.time()) >= expires - _ROLE_REFRESH_MARGIN


ACCESS_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}
)
THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)
BAD_CREDENTIALS = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "AuthFailure",
        "InvalidAccessKeyId",
    }
)


# The resource went away between discovery and this call: not a poller error.
RESOURCE_GONE = frozenset({"ResourceNotFoundException", "EntityNotFoundException"})


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a failed call, None for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, worded for the ``aws.poller.error`` item.

    Only the operation, a category and the AWS error code: AWS messages can
    carry principal ARNs and request details that have no place in Zabbix.
    """

    reason: str
    throttled: bool = False
    credentials: bool = False  # worth rebuilding the clients before the next cycle
    halts: bool = False  # every further call of this cycle would fail the same way
    denied: bool = False  # refused by IAM (a policy, a trust policy, an external id)


def describe_failure(exc: BaseException) -> Failure:
    from botocore import exceptions as bx  # noqa: PLC0415 (lazy, as above)

    if isinstance(exc, bx.ClientError):
        code = error_code(exc) or "unknown"
        operation = exc.operation_name
        if code in THROTTLED:
            # Each further call would spend its retries on the same limit and log the same
            # warning (300 jobs, 300 warnings): the rest waits for the next, backed-off cycle.
            return Failure(f"{operation}: throttled ({code})", throttled=True, halts=True)
        if code in ACCESS_DENIED:
            return Failure(f"{operation}: access denied ({code})", denied=True)
        if code in BAD_CREDENTIALS:
            return Failure(f"{operation}: bad credentials ({code})", credentials=True, halts=True)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if status == 403:
            # AWS answers every refusal with 403; some peers (proxies, emulators)
            # do it without an AWS error code in a form botocore can read.
            return Failure(f"{operation}: access denied ({code})", denied=True)
        return Failure(f"{operation}: API error ({code}, HTTP {status})")
    name = type(exc).__name__
    if isinstance(
        exc,
        bx.NoCredentialsError
        | bx.PartialCredentialsError
        | bx.ProfileNotFound
        | bx.CredentialRetrievalError
        | bx.NoRegionError,
    ):
        return Failure(f"no usable credentials ({name})", credentials=True, halts=True)
    if isinstance(
        exc,
        bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError | bx.ConnectionClosedError,
    ):
        return Failure(f"endpoint unreachable ({name})", halts=True)
    if isinstance(exc, bx.BotoCoreError):
        return Failure(f"AWS client error ({name})")
    return Failure(f"unexpected error ({name})")

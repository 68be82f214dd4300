"""The ``[collectors.<name>]`` section of an AWS poller, validated."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from trapline.collectors.aws.catalog import BUILTIN_CATALOG, CatalogError, NamespaceSpec, load_catalog
from trapline.core.config import Secret, Section


@dataclass(frozen=True, slots=True)
class ResourceFilter:
    """Which resources to watch: the name matches the regex and every tag matches."""

    name_pattern: re.Pattern[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def matches_name(self, name: str) -> bool:
        return self.name_pattern is None or self.name_pattern.search(name) is not None

    def matches_tags(self, tags: Mapping[str, str]) -> bool:
        # "*" asks only for the tag to be present, whatever its value.
        return all(k in tags and v in ("*", tags[k]) for k, v in self.tags.items())


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    enabled: bool
    filter: ResourceFilter
    metrics: NamespaceSpec | None  # None when metrics are turned off
    host_prefix: str


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """One watched account of the list form: the role to assume in it and the regions to poll."""

    label: str  # names its hosts, keys and self-metrics; the account id unless configured
    account_id: str
    role_arn: str
    external_id: Secret | None
    regions: tuple[str, ...]
    role_session_name: str


@dataclass(frozen=True, slots=True)
class AwsSettings:
    name: str
    host: str
    region: str
    profile: str | None
    role_arn: str | None
    external_id: Secret | None
    role_session_name: str
    endpoint_url: str | None
    poll_interval: float
    discovery_interval: float
    max_backoff: float
    max_attempts: int
    timeout: float
    emr: ServiceSettings
    emr_serverless: ServiceSettings
    glue: ServiceSettings
    # Off unless enabled: they need IAM actions that policies written before them lack.
    glue_crawlers: ServiceSettings
    glue_workflows: ServiceSettings
    # The list form (``[[...accounts]]``); empty in the single-account form.
    accounts: tuple[AccountSettings, ...] = ()
    # The SQS queue EventBridge feeds with state changes (deploy/aws/eventbridge.yaml); None: polling only.
    events_queue_url: str | None = None
    events_region: str = ""  # the queue's region
    # With events on, the run and state polls only reconcile, this often (s); else every poll_interval.
    reconcile_interval: float = 900.0
    # "<label>/<region>" of one account and region of the list form, "" in the single-account
    # form: it goes into Glue job keys so that jobs of the same name in two accounts stay apart.
    scope: str = ""

    def services(self) -> dict[str, ServiceSettings]:
        return {
            "emr": self.emr,
            "emr_serverless": self.emr_serverless,
            "glue": self.glue,
            "glue_crawlers": self.glue_crawlers,
            "glue_workflows": self.glue_workflows,
        }


_HOST_PREFIX = {
    "emr": "emr-",
    "emr_serverless": "emr-serverless-",
    "glue": "",
    "glue_crawlers": "",
    "glue_workflows": "",
}
# A label lands in Zabbix host names (letters, digits, ".", "-", "_") and unquoted key parameters.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def parse_settings(name: str, section: Section) -> AwsSettings:
    section.text("type")
    catalog_path = section.path("catalog", BUILTIN_CATALOG)
    try:
        catalog = load_catalog(catalog_path)
    except CatalogError as exc:
        raise section.error("catalog", str(exc)) from None
    poll_interval = section.number("poll_interval", 60.0, minimum=1.0)
    settings = AwsSettings(
        name=name,
        host=section.text("host"),
        region=section.text("region"),
        profile=section.text("profile", "") or None,
        role_arn=section.text("role_arn", "") or None,
        external_id=section.secret("external_id", required=False),
        role_session_name=section.text("role_session_name", f"trapline-{name}"),
        endpoint_url=section.url("endpoint_url", ("https", "http")) if section.has("endpoint_url") else None,
        poll_interval=poll_interval,
        discovery_interval=section.number("discovery_interval", 600.0, minimum=poll_interval),
        max_backoff=section.number("max_backoff", 900.0, minimum=poll_interval),
        max_attempts=section.integer("max_attempts", 5, minimum=1),
        timeout=section.number("timeout", 30.0, minimum=1.0),
        events_queue_url=section.url("events_queue_url", ("https", "http"))
        if section.has("events_queue_url")
        else None,
        events_region=section.text("events_region", section.text("region")),
        reconcile_interval=section.number("reconcile_interval", 900.0, minimum=poll_interval),
        emr=_service(section, "emr", catalog),
        emr_serverless=_service(section, "emr_serverless", catalog),
        glue=_service(section, "glue", catalog),
        glue_crawlers=_service(section, "glue_crawlers", catalog, enabled=False),
        glue_workflows=_service(section, "glue_workflows", catalog, enabled=False),
        accounts=_accounts(section, name),
    )
    for service in ("glue_crawlers", "glue_workflows"):
        if settings.services()[service].filter.tags:
            # Neither GetCrawlers nor ListWorkflows filters by tag, and tags would cost a call each.
            raise section.error(service, "tags: not supported for crawlers and workflows, use name_regex")
    if settings.accounts and settings.role_arn:
        # Chained roles would need the first role's credentials refreshed too: not supported.
        raise section.error("role_arn", "not together with accounts (each account names its own role)")
    section.done()
    return settings


def _accounts(parent: Section, name: str) -> tuple[AccountSettings, ...]:
    accounts: list[AccountSettings] = []
    default_region = parent.text("region")
    for section in parent.tables("accounts"):
        role_arn = section.text("role_arn")
        match = _ROLE_ARN.fullmatch(role_arn)
        if match is None:
            raise section.error("role_arn", "expected arn:aws:iam::<12-digit account>:role/<name>")
        label = section.text("label", match.group(1))
        if not _LABEL.fullmatch(label):
            raise section.error("label", "1-63 letters, digits, '.', '-', '_', from a letter or digit")
        regions = tuple(section.strings("regions", [default_region]))
        for region in regions:
            if not _REGION.fullmatch(region):
                raise section.error("regions", f"{region!r} is not a region name")
        if not regions or len(set(regions)) != len(regions):
            raise section.error("regions", "expected at least one region, each once")
        if any(a.label == label for a in accounts):
            raise section.error("label", f"{label!r} is used by another account (give each a label)")
        accounts.append(
            AccountSettings(
                label=label,
                account_id=match.group(1),
                role_arn=role_arn,
                external_id=section.secret("external_id", required=False),
                regions=regions,
                role_session_name=section.text("role_session_name", f"trapline-{name}"),
            )
        )
        section.done()
    # Host names join label and region with "-": two pairs that spell the same (odd labels
    # and regions could) would share EMR hosts, so the config is refused instead.
    tags = [f"{a.label}-{r}" for a in accounts for r in a.regions]
    if len(set(tags)) != len(tags):
        raise parent.error("accounts", "two accounts' label-region pairs spell the same host names")
    return tuple(accounts)


def scoped(settings: AwsSettings, account: AccountSettings, region: str) -> AwsSettings:
    """The settings of one account and region of the list form, as a single-account poller takes them.

    EMR and Serverless hosts get the label and region after their prefix, so that two accounts'
    resources never share a host name.
    """
    tag = f"{account.label}-{region}-"
    return dataclasses.replace(
        settings,
        region=region,
        role_arn=account.role_arn,
        external_id=account.external_id,
        role_session_name=account.role_session_name,
        accounts=(),
        scope=f"{account.label}/{region}",
        emr=dataclasses.replace(settings.emr, host_prefix=settings.emr.host_prefix + tag),
        emr_serverless=dataclasses.replace(
            settings.emr_serverless, host_prefix=settings.emr_serverless.host_prefix + tag
        ),
    )


def _service(
    parent: Section, service: str, catalog: Mapping[str, NamespaceSpec], *, enabled: bool = True
) -> ServiceSettings:
    section = parent.table(service)
    pattern = section.text("name_regex", "")
    try:
        compiled = re.compile(pattern) if pattern else None
    except re.error as exc:
        raise section.error("name_regex", f"not a valid regular expression ({exc})") from None
    tags_section = section.table("tags")
    tags = {key: tags_section.text(key) for key in tags_section.names()}
    metrics_on = section.boolean("metrics", True)
    spec = catalog.get(service)
    delay = section.integer("metric_delay", spec.delay if spec else 0, minimum=0)
    if spec is not None:
        spec = dataclasses.replace(spec, delay=delay)
    settings = ServiceSettings(
        enabled=section.boolean("enabled", enabled),
        filter=ResourceFilter(compiled, tags),
        metrics=spec if metrics_on else None,
        host_prefix=section.text("host_prefix", _HOST_PREFIX[service]),
    )
    section.done()
    return settings

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

    def services(self) -> dict[str, ServiceSettings]:
        return {"emr": self.emr, "emr_serverless": self.emr_serverless, "glue": self.glue}


_HOST_PREFIX = {"emr": "emr-", "emr_serverless": "emr-serverless-", "glue": ""}


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
        emr=_service(section, "emr", catalog),
        emr_serverless=_service(section, "emr_serverless", catalog),
        glue=_service(section, "glue", catalog),
    )
    section.done()
    return settings


def _service(parent: Section, service: str, catalog: Mapping[str, NamespaceSpec]) -> ServiceSettings:
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
        enabled=section.boolean("enabled", True),
        filter=ResourceFilter(compiled, tags),
        metrics=spec if metrics_on else None,
        host_prefix=section.text("host_prefix", _HOST_PREFIX[service]),
    )
    section.done()
    return settings

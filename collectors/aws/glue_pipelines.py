"""Glue crawlers and workflows: discovery and the outcome of their last crawl / their runs.

Both live on the poller host like Glue jobs (one item set per crawler or workflow, keyed by its
name), and each outcome is ONE JSON value, as for job runs: a problem's name and every field it
shows are read from the same crawl or run.  Blocking (boto3); called from the worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from trapline.collectors.aws.cloudwatch import Window
from trapline.collectors.aws.missed import never_started
from trapline.collectors.aws.resources import (
    Cycle,
    Resource,
    Run,
    RunTracker,
    epoch,
    job_label,
    key_param,
)
from trapline.collectors.aws.schedule import Outcome
from trapline.collectors.aws.services import _PAGE, _run, _text, newest_runs
from trapline.collectors.aws.session import Clients
from trapline.collectors.aws.settings import ServiceSettings
from trapline.core.model import Value

if TYPE_CHECKING:
    from mypy_boto3_glue.type_defs import CrawlerMetricsTypeDef, CrawlerTypeDef, WorkflowRunTypeDef

# GetCrawlerMetrics takes at most 100 names per call (CrawlerNameList, botocore's service model).
METRICS_BATCH = 100
# GetCrawlers answers up to 1000 crawlers a page; fewer, larger pages cost fewer calls.
CRAWLER_PAGE = 1000
# WorkflowRunStatistics field -> JSON field of the run value.
ACTION_COUNTS = {
    "TotalActions": "actions_total",
    "SucceededActions": "actions_succeeded",
    "FailedActions": "actions_failed",
    "StoppedActions": "actions_stopped",
    "TimeoutActions": "actions_timeout",
    "ErroredActions": "actions_errored",
    "RunningActions": "actions_running",
    "WaitingActions": "actions_waiting",
}
CRAWL_OUTCOMES = frozenset({"SUCCEEDED", "CANCELLED", "FAILED"})
# Action outcomes that make a finished workflow run a failure, as its problem names them.
BAD_ACTIONS = {
    "FailedActions": "failed",
    "StoppedActions": "stopped",
    "TimeoutActions": "timed out",
    "ErroredActions": "errored",
}
WORKFLOW_FINAL_STATES = frozenset({"COMPLETED", "STOPPED", "ERROR"})


def _item_names(scope: str, name: str, prefix: str) -> dict[str, str]:
    """LLD macros naming a crawler or workflow: in the list form key and label carry the scope,
    so that two accounts' crawlers of one name are two item sets on the one poller host."""
    return {
        f"{{#{prefix}NAME}}": name,
        f"{{#{prefix}KEY}}": key_param(f"{scope}/{name}" if scope else name),
        f"{{#{prefix}LABEL}}": f"{scope}: {job_label(name)}" if scope else job_label(name),
    }


def _resource(service: str, host: str, name: str, lld: dict[str, str], prefix: str) -> Resource:
    return Resource(service, name, name, host, lld[f"{{#{prefix}KEY}}"], lld)


class CrawlerService:
    """Glue crawlers: state every cycle, and each new last crawl once, with its table counts."""

    name = "glue_crawlers"

    def __init__(self, settings: ServiceSettings, host: str, scope: str = "") -> None:
        self.settings = settings
        self.host = host
        self.scope = scope
        # crawler -> (crawl id, status) of the last crawl reported; a listed crawl is final already
        self.reported: dict[str, tuple[str, str]] = {}
        # crawler -> how its last crawl ended, for the Glue triggers conditional on crawls (shared
        # with GlueService, so changed in place)
        self.outcomes: dict[str, Outcome] = {}

    def _crawlers(self, clients: Clients) -> Iterator[CrawlerTypeDef]:
        pages = clients.glue.get_paginator("get_crawlers").paginate(
            PaginationConfig={"PageSize": CRAWLER_PAGE}
        )
        return (c for page in pages for c in page.get("Crawlers", []))

    def discover(self, clients: Clients) -> list[Resource]:
        wanted = self.settings.filter
        found = []
        for crawler in self._crawlers(clients):
            name = crawler.get("Name", "")
            if name and wanted.matches_name(name):
                lld = _item_names(self.scope, name, "CRAWLER")
                found.append(_resource(self.name, self.host, name, lld, "CRAWLER"))
        names = {r.id for r in found}
        self.reported = {name: seen for name, seen in self.reported.items() if name in names}
        for gone in set(self.outcomes) - names:
            del self.outcomes[gone]
        return found

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        listing = cycle.guard(
            "glue crawlers", lambda: {c.get("Name", ""): c for c in self._crawlers(clients)}
        )
        if listing is None:
            return
        ended: list[tuple[Resource, CrawlerTypeDef]] = []
        for crawler in resources:
            found = listing.get(crawler.id)
            if found is None:
                continue  # deleted since discovery; the next discovery drops it
            cycle.reading(crawler.host, crawler.key("glue.crawler.state"), found.get("State", "UNKNOWN"))
            last = found.get("LastCrawl")
            # LastCrawl is the last crawl that ended (AWS documents SUCCEEDED, CANCELLED, FAILED);
            # any other status (moto shows RUNNING) is not an outcome yet.
            status = last.get("Status", "") if last is not None else ""
            if status in CRAWL_OUTCOMES and self.reported.get(crawler.id) != _crawl_mark(found):
                ended.append((crawler, found))
        if not ended:
            return
        # Table counts and run time of a crawl come only from GetCrawlerMetrics: asked once per
        # new crawl, for up to 100 crawlers a call, not for every crawler every cycle.
        metrics = cycle.guard(
            "glue crawler metrics", partial(self._metrics, clients, [r.id for r, _ in ended])
        )
        if metrics is None:
            return  # not marked as reported: asked again next cycle
        for crawler, found in ended:
            crawl = _crawl_run(found, metrics.get(crawler.id, {}))
            cycle.runs(crawler, "glue.crawler.crawl", [crawl])
            self.reported[crawler.id] = _crawl_mark(found)
            # Its end only when known (start + run time): a guessed end could make a job that ran
            # after the crawl look as if it had not.
            if "ended" in dict(crawl.values):
                self.outcomes[crawler.id] = Outcome(crawl.state, int(dict(crawl.values)["ended"]))

    def _metrics(self, clients: Clients, names: Sequence[str]) -> dict[str, CrawlerMetricsTypeDef]:
        paginator = clients.glue.get_paginator("get_crawler_metrics")
        out: dict[str, CrawlerMetricsTypeDef] = {}
        for start in range(0, len(names), METRICS_BATCH):
            batch = list(names[start : start + METRICS_BATCH])
            for page in paginator.paginate(CrawlerNameList=batch):
                out.update((m.get("CrawlerName", ""), m) for m in page.get("CrawlerMetricsList", []))
        return out

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]:
        return []  # no CloudWatch metrics of crawlers in the catalog


def _crawl_id(crawler: CrawlerTypeDef) -> str:
    """A crawl has no id in GetCrawlers: its log-message prefix is unique per crawl, else its start."""
    last = crawler.get("LastCrawl", {})
    return last.get("MessagePrefix") or str(epoch(last.get("StartTime")) or "")


def _crawl_mark(crawler: CrawlerTypeDef) -> tuple[str, str]:
    return _crawl_id(crawler), crawler.get("LastCrawl", {}).get("Status", "")


def _crawl_run(crawler: CrawlerTypeDef, metrics: CrawlerMetricsTypeDef) -> Run:
    last = crawler.get("LastCrawl", {})
    started = epoch(last.get("StartTime"))
    runtime = metrics.get("LastRuntimeSeconds")
    ended = None if started is None or runtime is None else started + round(runtime)
    extra: list[tuple[str, Value]] = []
    if runtime is not None:
        extra.append(("duration", runtime))
    for field, name in (
        ("TablesCreated", "tables_created"),
        ("TablesUpdated", "tables_updated"),
        ("TablesDeleted", "tables_deleted"),
    ):
        if field in metrics:
            extra.append((name, metrics[field]))  # type: ignore[literal-required]
    error = _text(last.get("ErrorMessage"))
    return _run(_crawl_id(crawler), last.get("Status", "UNKNOWN"), started, ended, error=error, extra=extra)


class WorkflowService:
    """Glue workflows: every run state change, with the counts of its actions by outcome."""

    name = "glue_workflows"

    def __init__(self, settings: ServiceSettings, host: str, scope: str = "") -> None:
        self.settings = settings
        self.host = host
        self.scope = scope
        self.runs = RunTracker()

    def discover(self, clients: Clients) -> list[Resource]:
        wanted = self.settings.filter
        found = []
        for page in clients.glue.get_paginator("list_workflows").paginate():
            for name in page.get("Workflows", []):
                if name and wanted.matches_name(name):
                    lld = _item_names(self.scope, name, "WORKFLOW")
                    found.append(_resource(self.name, self.host, name, lld, "WORKFLOW"))
        self.runs.keep_only(r.id for r in found)
        return found

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        for workflow in resources:
            cycle.guard(f"glue workflow runs {workflow.id}", partial(self._runs, clients, workflow, cycle))

    def _runs(self, clients: Clients, workflow: Resource, cycle: Cycle) -> None:
        paginator = clients.glue.get_paginator("get_workflow_runs")
        pages = (
            page.get("Runs", [])
            for page in paginator.paginate(
                Name=workflow.id, IncludeGraph=False, PaginationConfig={"PageSize": _PAGE}
            )
        )
        runs = newest_runs(self.runs, workflow.id, pages, lambda r: r.get("WorkflowRunId", ""))
        missed: dict[str, list[str]] = {}
        for run_id in self._ended_with_actions_not_run(workflow, runs):
            found = cycle.guard(
                f"glue workflow run {run_id}", partial(self._missed, clients, workflow, run_id)
            )
            if found:
                missed[run_id] = found
        values = [_workflow_run(r, missed.get(r.get("WorkflowRunId", ""), [])) for r in runs]
        cycle.runs(workflow, "glue.workflow.run", self.runs.changes(workflow.id, values))

    def _ended_with_actions_not_run(
        self, workflow: Resource, runs: Sequence[WorkflowRunTypeDef]
    ) -> list[str]:
        """Runs about to be reported as ended whose counts leave actions that never ran.

        Only these cost a GetWorkflowRun with the graph, once each (the next poll knows them).
        """
        reported = runs if self.runs.primed(workflow.id) else sorted(runs, key=_started)[-1:]
        return [
            r.get("WorkflowRunId", "")
            for r in reported
            if r.get("Status") in WORKFLOW_FINAL_STATES
            and r.get("Status") != "STOPPED"  # stopped on purpose: what did not run was meant not to
            and self.runs.state(workflow.id, r.get("WorkflowRunId", "")) != r.get("Status")
            and _not_run(dict(r.get("Statistics", {}))) > 0  # type: ignore[arg-type]
        ]

    def _missed(self, clients: Clients, workflow: Resource, run_id: str) -> list[str]:
        run = clients.glue.get_workflow_run(Name=workflow.id, RunId=run_id, IncludeGraph=True)["Run"]
        return never_started(dict(run.get("Graph", {})))

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]:
        return []  # no CloudWatch metrics of workflows in the catalog


def _started(run: WorkflowRunTypeDef) -> float:
    return epoch(run.get("StartedOn")) or 0


def _not_run(statistics: dict[str, int]) -> int:
    """Actions of the run in no count: neither ran nor wait to run (never started)."""
    counted = sum(statistics.get(field, 0) for field in ACTION_COUNTS if field != "TotalActions")
    return statistics.get("TotalActions", 0) - counted


def _workflow_run(run: WorkflowRunTypeDef, missed: Sequence[str] = ()) -> Run:
    state = run.get("Status", "UNKNOWN")
    started = epoch(run.get("StartedOn"))
    ended = epoch(run.get("CompletedOn")) if state in WORKFLOW_FINAL_STATES else None
    extra: list[tuple[str, Value]] = []
    if started is not None and ended is not None:
        extra.append(("duration", ended - started))
    statistics: dict[str, int] = dict(run.get("Statistics", {}))  # type: ignore[arg-type]
    extra.extend((name, statistics[field]) for field, name in ACTION_COUNTS.items() if field in statistics)
    if missed:
        extra.append(("actions_missed", len(missed)))
    error = _text(run.get("ErrorMessage"))
    if not error and state in WORKFLOW_FINAL_STATES:
        error = _text("; ".join(part for part in (_bad_actions(statistics), *missed) if part))
    return _run(run.get("WorkflowRunId", ""), state, started, ended, error=error, extra=extra)


def _bad_actions(statistics: dict[str, int]) -> str:
    """What went wrong in a finished run, from its counts: AWS gives no ErrorMessage when a run
    COMPLETED with failed actions, and the problem name should still say what happened."""
    bad = [
        f"{statistics[field]} {word}" for field, word in BAD_ACTIONS.items() if statistics.get(field, 0) > 0
    ]
    if not bad:
        return ""
    return f"{', '.join(bad)} of {statistics.get('TotalActions', 0)} actions"

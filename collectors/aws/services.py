"""Discovery and run/state health of EMR clusters, EMR Serverless applications and Glue jobs.

The service APIs are the primary health signal: they name the failed run and
say why, minutes before CloudWatch has a number.  Blocking (boto3); called
from the collector's worker thread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from trapline.collectors.aws.cloudwatch import Window
from trapline.collectors.aws.missed import NOTHING_DUE, Due, JobTriggers, Seen
from trapline.collectors.aws.resources import (
    Cycle,
    Resource,
    Run,
    RunTracker,
    epoch,
    job_label,
    key_param,
    now_epoch,
    pages_until_known,
    routing,
)
from trapline.collectors.aws.schedule import Outcome
from trapline.collectors.aws.session import ACCESS_DENIED, RESOURCE_GONE, Clients, error_code
from trapline.collectors.aws.settings import ServiceSettings
from trapline.core.model import Value

if TYPE_CHECKING:
    from mypy_boto3_emr.literals import ClusterStateType
    from mypy_boto3_emr.type_defs import (
        ClusterSummaryTypeDef,
        ClusterTypeDef,
        StepSummaryTypeDef,
    )
    from mypy_boto3_emr_serverless.type_defs import ApplicationSummaryTypeDef, JobRunSummaryTypeDef
    from mypy_boto3_glue.type_defs import JobRunTypeDef, TriggerTypeDef

T = TypeVar("T")
log = logging.getLogger(__name__)

EMR_ACTIVE_STATES: tuple[ClusterStateType, ...] = (
    "STARTING",
    "BOOTSTRAPPING",
    "RUNNING",
    "WAITING",
    "TERMINATING",
)
EMR_ENDED_STATES: tuple[ClusterStateType, ...] = ("TERMINATED", "TERMINATED_WITH_ERRORS")
EMR_METRIC_STATES = frozenset({"RUNNING", "WAITING"})  # clusters that publish metrics
GLUE_FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED", "TIMEOUT", "ERROR", "EXPIRED"})
SERVERLESS_METRIC_STATES = frozenset({"STARTED"})
_PAGE = 50
TRIGGER_PAGE = 200  # GetTriggers' largest MaxResults (botocore's Glue service model)
_TEXT_LIMIT = 2048  # longest error text sent to Zabbix


class Service(Protocol):
    name: str
    settings: ServiceSettings

    def discover(self, clients: Clients) -> list[Resource]: ...

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None: ...

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]: ...


def newest_runs(
    tracker: RunTracker, scope: str, pages: Iterable[Sequence[T]], run_id: Callable[[T], str]
) -> list[T]:
    """The runs to compare with ``tracker`` (pages until a known one), or none when the
    job/application/workflow was deleted since discovery."""
    try:
        return pages_until_known(tracker, scope, pages, run_id)
    except Exception as exc:
        if error_code(exc) in RESOURCE_GONE:
            return []
        raise


def _text(*parts: object) -> str:
    return ": ".join(str(p) for p in parts if p)[:_TEXT_LIMIT]


def _run(
    run_id: str,
    state: str,
    started: int | None,
    ended: int | None,
    *,
    name: str = "",
    error: str = "",
    extra: Sequence[tuple[str, Value]] = (),
) -> Run:
    """A run clocked at its end when it has one (the problem then carries the failure time), else now.

    Clocking an unfinished run at its start could put it behind a value sent earlier; Zabbix's
    last() would then still be the earlier run, and a failure trigger would fire for it again.
    """
    clock = ended or now_epoch()
    values: list[tuple[str, Value]] = []
    if started is not None:
        values.append(("started", started))
    if ended is not None:
        values.append(("ended", ended))
    return Run(run_id, state, float(started or clock), clock, (*values, *extra), name, error)


class EmrService:
    """EMR on EC2: one Zabbix host per cluster (``emr-<cluster id>``)."""

    name = "emr"

    def __init__(self, settings: ServiceSettings, discovery_interval: float) -> None:
        self.settings = settings
        self.discovery_interval = discovery_interval
        self.steps = RunTracker()
        self.states: dict[str, str] = {}
        self._final: set[str] = set()  # clusters whose terminal state was reported
        self.pending_sent: dict[str, str] = {}  # cluster -> its waiting step as last sent
        self._listed_at: int | None = None  # when the previous discovery listed clusters

    def _active(self, clients: Clients) -> list[ClusterSummaryTypeDef]:
        pages = clients.emr.get_paginator("list_clusters").paginate(ClusterStates=list(EMR_ACTIVE_STATES))
        return [c for page in pages for c in page.get("Clusters", [])]

    def _ended_since(self, clients: Clients, since: int) -> list[ClusterSummaryTypeDef]:
        """Clusters created since ``since`` that have already terminated.

        A cluster that fails in bootstrap is gone from the active list within minutes, often
        between two discoveries: without this it would never get a host, nor its problem.
        """
        pages = clients.emr.get_paginator("list_clusters").paginate(
            ClusterStates=list(EMR_ENDED_STATES), CreatedAfter=dt.datetime.fromtimestamp(since, dt.UTC)
        )
        return [c for page in pages for c in page.get("Clusters", [])]

    def discover(self, clients: Clients) -> list[Resource]:
        found = []
        wanted = self.settings.filter
        now = now_epoch()
        # A little overlap with the previous listing: a cluster created as it ran is not missed.
        since = (self._listed_at or now - int(self.discovery_interval)) - 60
        clusters = {c.get("Id", ""): c for c in (*self._ended_since(clients, since), *self._active(clients))}
        for cluster in clusters.values():
            cluster_id, name = cluster.get("Id", ""), cluster.get("Name", "")
            if not cluster_id or not wanted.matches_name(name):
                continue
            # Tags are not in the listing: one DescribeCluster per cluster and discovery.
            described = _describe(clients, cluster_id)
            tags = {t.get("Key", ""): t.get("Value", "") for t in described.get("Tags", [])}
            if not wanted.matches_tags(tags):
                continue
            host = f"{self.settings.host_prefix}{cluster_id}"
            lld = {"{#CLUSTERID}": cluster_id, "{#CLUSTERNAME}": name, "{#HOST}": host, **routing(tags)}
            found.append(Resource(self.name, cluster_id, name, host, None, lld))
        ids = {r.id for r in found}
        self.steps.keep_only(ids)
        self._final &= ids
        self.pending_sent = {c: sent for c, sent in self.pending_sent.items() if c in ids}
        self._listed_at = now
        return found

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        listing = cycle.guard("emr clusters", lambda: {c.get("Id", ""): c for c in self._active(clients)})
        if listing is None:
            return
        for cluster in resources:
            if cluster.id in self._final:
                continue
            summary: Any = listing.get(cluster.id)
            if summary is None:
                # Gone from the active list: ask once for its terminal state and reason, and
                # read its steps one last time (a step may have failed since the last poll).
                summary = cycle.guard(f"emr cluster {cluster.id}", partial(_describe, clients, cluster.id))
                if summary is None:
                    continue
                self._final.add(cluster.id)
            status = summary.get("Status", {})
            reason = status.get("StateChangeReason", {})
            self.report_state(
                cluster, status.get("State", "UNKNOWN"), reason.get("Code"), reason.get("Message"), cycle
            )
            cycle.guard(f"emr steps {cluster.id}", partial(self._steps, clients, cluster, cycle))

    def report_state(
        self, cluster: Resource, state: str, code: object, message: object, cycle: Cycle
    ) -> None:
        """The cluster's state and why it is in it (by a poll or an event)."""
        self.states[cluster.id] = state
        cycle.reading(cluster.host, "emr.cluster.state.reason", _text(code, message))
        cycle.reading(cluster.host, "emr.cluster.state", state)

    def _steps(self, clients: Clients, cluster: Resource, cycle: Cycle) -> None:
        pages = (
            page.get("Steps", [])
            for page in clients.emr.get_paginator("list_steps").paginate(ClusterId=cluster.id)
        )
        steps = pages_until_known(self.steps, cluster.id, pages, lambda s: s.get("Id", ""))
        cycle.runs(cluster, "emr.step", self.steps.changes(cluster.id, [_step_run(s) for s in steps]))
        self._report_pending(cluster, steps, cycle)

    def _report_pending(self, cluster: Resource, steps: Sequence[StepSummaryTypeDef], cycle: Cycle) -> None:
        """The cluster's oldest PENDING step and since when it waits, when that changes.

        Its own item, not the step's run value: the run value is sent once per state change,
        so a step that stays PENDING while another step ends would be hidden behind that newer
        value.  The steps read are at least the newest page (ListSteps is newest first), which
        is where pending steps are.
        """
        waiting = [
            (epoch(s.get("Status", {}).get("Timeline", {}).get("CreationDateTime")) or 0, s)
            for s in steps
            if s.get("Status", {}).get("State") == "PENDING"
        ]
        oldest = min(waiting, key=lambda w: w[0], default=None)
        since, step = (
            (0, "")
            if oldest is None
            else (oldest[0], f"{oldest[1].get('Name', '')} ({oldest[1].get('Id', '')})")
        )
        value = json.dumps({"since": since, "step": step}, ensure_ascii=False, separators=(",", ":"))
        if self.pending_sent.get(cluster.id) != value:
            self.pending_sent[cluster.id] = value
            cycle.reading(cluster.host, "emr.step.pending", value)

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]:
        return [r for r in resources if self.states.get(r.id) in EMR_METRIC_STATES]


def _describe(clients: Clients, cluster_id: str) -> ClusterTypeDef:
    return clients.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]


def _step_run(step: StepSummaryTypeDef) -> Run:
    status = step.get("Status", {})
    timeline = status.get("Timeline", {})
    failure = status.get("FailureDetails", {})
    change = status.get("StateChangeReason", {})
    error = _text(failure.get("Reason"), failure.get("Message")) or _text(
        change.get("Code"), change.get("Message")
    )
    started = epoch(timeline.get("StartDateTime")) or epoch(timeline.get("CreationDateTime"))
    state, ended = status.get("State", "UNKNOWN"), epoch(timeline.get("EndDateTime"))
    return _run(step.get("Id", ""), state, started, ended, name=step.get("Name", ""), error=error)


class ServerlessService:
    """EMR Serverless: one Zabbix host per application (``emr-serverless-<application id>``)."""

    name = "emr_serverless"

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.job_runs = RunTracker()
        self.states: dict[str, str] = {}

    def _applications(self, clients: Clients) -> list[ApplicationSummaryTypeDef]:
        pages = clients.emr_serverless.get_paginator("list_applications").paginate()
        return [a for page in pages for a in page.get("applications", [])]

    def discover(self, clients: Clients) -> list[Resource]:
        found = []
        wanted = self.settings.filter
        for app in self._applications(clients):
            app_id, name = app.get("id", ""), app.get("name", "")
            if not app_id or app.get("state") == "TERMINATED" or not wanted.matches_name(name):
                continue
            # Tags are not in the listing: one GetApplication per application and discovery.
            tags = clients.emr_serverless.get_application(applicationId=app_id)["application"].get("tags", {})
            if not wanted.matches_tags(tags):
                continue
            host = f"{self.settings.host_prefix}{app_id}"
            lld = {
                "{#APPID}": app_id,
                "{#APPNAME}": name,
                "{#APPTYPE}": app.get("type", ""),
                "{#HOST}": host,
                **routing(tags),
            }
            found.append(Resource(self.name, app_id, name, host, None, lld))
        self.job_runs.keep_only(r.id for r in found)
        return found

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        listing = cycle.guard("emr-serverless applications", lambda: self._applications(clients))
        if listing is None:
            return
        self.states = {a.get("id", ""): a.get("state", "UNKNOWN") for a in listing}
        for app in resources:
            state = self.states.get(app.id)
            if state is not None:
                cycle.reading(app.host, "emr.serverless.app.state", state)
            cycle.guard(f"emr-serverless job runs {app.id}", partial(self._job_runs, clients, app, cycle))

    def _job_runs(self, clients: Clients, app: Resource, cycle: Cycle) -> None:
        paginator = clients.emr_serverless.get_paginator("list_job_runs")
        pages = (
            page.get("jobRuns", [])
            for page in paginator.paginate(applicationId=app.id, PaginationConfig={"PageSize": _PAGE})
        )
        runs = newest_runs(self.job_runs, app.id, pages, lambda r: r.get("id", ""))
        changed = self.job_runs.changes(app.id, [_serverless_run(r) for r in runs])
        cycle.runs(app, "emr.serverless.job.run", changed)

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]:
        return [r for r in resources if self.states.get(r.id) in SERVERLESS_METRIC_STATES]


def _serverless_run(run: JobRunSummaryTypeDef) -> Run:
    state = run.get("state", "UNKNOWN")
    final = state in ("SUCCESS", "FAILED", "CANCELLED")
    ended = epoch(run.get("updatedAt")) if final else None
    error, name = _text(run.get("stateDetails")), run.get("name", "")
    return _run(run.get("id", ""), state, epoch(run.get("createdAt")), ended, name=name, error=error)


class GlueService:
    """Glue jobs: items on the poller host, one item prototype per job (``[{#JOBKEY}]``)."""

    name = "glue"

    def __init__(
        self, settings: ServiceSettings, host: str, scope: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.host = host
        self.scope = scope  # "<account label>/<region>" in the list form: the poller host holds many
        self.clock = clock
        self.job_runs = RunTracker()
        self.last_success: dict[str, int] = {}
        self.active_until: dict[str, int] = {}  # job -> last epoch a run was seen running or ending
        self.outcomes: dict[str, Outcome] = {}  # job -> how its newest finished run ended
        self.crawl_outcomes: Mapping[str, Outcome] = {}  # the crawler service's, when it is on
        self.triggers = JobTriggers()
        self.due_sent: dict[str, Due | None] = {}  # job -> the missed start last sent (None: nothing due)
        self._job_arn: str | None = None  # "arn:<partition>:glue:<region>:<account>:job/", once known
        self._tags_denied = False  # GetTags refused once: said in the log, not again
        self._triggers_denied = False  # GetTriggers refused once: missed runs are not judged
        self._triggers_fresh = False  # read by this cycle's discovery: no second reading needed

    def discover(self, clients: Clients) -> list[Resource]:
        wanted = self.settings.filter
        tagged: set[str] | None = None
        if wanted.tags:
            # ListJobs filters by tags server-side; GetJobs does not return tags.
            pages = clients.glue.get_paginator("list_jobs").paginate(Tags=dict(wanted.tags))
            tagged = {name for page in pages for name in page.get("JobNames", [])}
        found = []
        for page in clients.glue.get_paginator("get_jobs").paginate():
            for job in page.get("Jobs", []):
                name = job.get("Name", "")
                if not name or not wanted.matches_name(name) or (tagged is not None and name not in tagged):
                    continue
                arguments = job.get("DefaultArguments", {})
                flags = frozenset(k for k, v in arguments.items() if v.lower() == "true")
                # In the list form the key and label start with the account and region: two
                # accounts' jobs of one name are two item sets on the one poller host.
                param = key_param(f"{self.scope}/{name}" if self.scope else name)
                label = f"{self.scope}: {job_label(name)}" if self.scope else job_label(name)
                lld = {
                    "{#JOBNAME}": name,
                    "{#JOBKEY}": param,
                    "{#JOBLABEL}": label,
                    "{#GLUEVERSION}": job.get("GlueVersion", ""),
                    "{#WORKERTYPE}": job.get("WorkerType", ""),
                    **routing(self._tags(clients, name)),
                }
                found.append(Resource(self.name, name, name, self.host, param, lld, flags))
        self.job_runs.keep_only(r.id for r in found)
        names = {r.id for r in found}
        self.outcomes = {job: seen for job, seen in self.outcomes.items() if job in names}
        self.due_sent = {job: due for job, due in self.due_sent.items() if job in names}
        self.triggers.update(self._triggers(clients), int(self.clock()))
        self._triggers_fresh = True
        return found

    def _triggers(self, clients: Clients) -> list[TriggerTypeDef]:
        """Every trigger of the account and region, or none while GetTriggers is not granted.

        glue:GetTriggers came with the missed-run detection: a policy from before it costs that
        detection (said once in the log), not the monitoring of the jobs.
        """
        try:
            pages = clients.glue.get_paginator("get_triggers").paginate(
                PaginationConfig={"PageSize": TRIGGER_PAGE}
            )
            return [t for page in pages for t in page.get("Triggers", [])]
        except Exception as exc:
            if error_code(exc) not in ACCESS_DENIED:
                raise
            if not self._triggers_denied:
                log.warning(
                    "glue:GetTriggers not granted: jobs that do not start are not detected (deploy/aws)"
                )
                self._triggers_denied = True
            return []

    def _tags(self, clients: Clients, name: str) -> dict[str, str]:
        """The job's AWS tags (GetJobs does not return them), or none while GetTags is not granted.

        glue:GetTags came with the routing tags: a policy from before it must not cost the
        monitoring of every job, only their team and owner tags.
        """
        if self._job_arn is None:
            caller = clients.sts.get_caller_identity()
            partition = caller["Arn"].split(":")[1]
            self._job_arn = f"arn:{partition}:glue:{clients.glue.meta.region_name}:{caller['Account']}:job/"
        try:
            return dict(clients.glue.get_tags(ResourceArn=self._job_arn + name).get("Tags", {}))
        except Exception as exc:
            if error_code(exc) not in ACCESS_DENIED:
                raise
            if not self._tags_denied:
                log.warning("glue:GetTags not granted: Glue problems carry no team/owner tags (deploy/aws)")
                self._tags_denied = True
            return {}

    def health(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        for job in resources:
            cycle.guard(f"glue job runs {job.id}", partial(self._job_runs, clients, job, cycle))
        self._report_due(clients, resources, cycle)

    def _dues(self, resources: Sequence[Resource]) -> dict[str, Due | None]:
        seen = Seen(int(self.clock()), self.active_until, self.outcomes, self.crawl_outcomes)
        return {job.id: self.triggers.due(job.id, seen) for job in resources}

    def _report_due(self, clients: Clients, resources: Sequence[Resource], cycle: Cycle) -> None:
        """Each job's missed start (or that none is missed), when it changed.

        Before a job is first said to be overdue the triggers are read again: one deactivated
        since the last discovery must not make a job overdue.  Without that reading (it failed)
        nothing new is said this cycle.
        """
        dues = self._dues(resources)
        just_read, self._triggers_fresh = self._triggers_fresh, False
        if not just_read and any(
            due is not None and due != self.due_sent.get(job) for job, due in dues.items()
        ):
            triggers = cycle.guard("glue triggers", partial(self._triggers, clients))
            if triggers is None:
                dues = {job: due for job, due in dues.items() if due is None or due == self.due_sent.get(job)}
            else:
                self.triggers.update(triggers, int(self.clock()))
                dues = self._dues(resources)
        for job in resources:
            if job.id in dues:
                self._send_due(job, dues[job.id], cycle)

    def _send_due(self, job: Resource, due: Due | None, cycle: Cycle) -> None:
        if job.id in self.due_sent and self.due_sent[job.id] == due:
            return
        self.due_sent[job.id] = due
        cycle.reading(job.host, job.key("glue.job.expected"), NOTHING_DUE if due is None else due.as_json())

    def _job_runs(self, clients: Clients, job: Resource, cycle: Cycle) -> None:
        paginator = clients.glue.get_paginator("get_job_runs")
        pages = (
            page.get("JobRuns", [])
            for page in paginator.paginate(JobName=job.id, PaginationConfig={"PageSize": _PAGE})
        )
        runs = newest_runs(self.job_runs, job.id, pages, lambda r: r.get("Id", ""))
        cycle.runs(job, "glue.job.run", self.job_runs.changes(job.id, [_glue_run(r) for r in runs]))
        self._note_activity(job, runs, cycle)

    def _note_activity(self, job: Resource, runs: Iterable[JobRunTypeDef], cycle: Cycle) -> None:
        for run in runs:
            self.note_run(job, run.get("JobRunState", ""), epoch(run.get("CompletedOn")), cycle)

    def note_run(self, job: Resource, state: str, ended: int | None, cycle: Cycle) -> None:
        """A run seen in ``state`` (by a poll or an event): its metrics window, its last success."""
        seen = now_epoch() if state not in GLUE_FINAL_STATES else (ended or 0)
        self.active_until[job.id] = max(self.active_until.get(job.id, 0), seen)
        if state == "SUCCEEDED" and ended and ended > self.last_success.get(job.id, 0):
            self.last_success[job.id] = ended
            cycle.reading(job.host, job.key("glue.job.last_success"), ended, ended, unit="unixtime")
        known = self.outcomes.get(job.id)
        if state in GLUE_FINAL_STATES and ended and (known is None or ended >= known.ended):
            self.outcomes[job.id] = Outcome(state, ended)
        due = self.due_sent.get(job.id)
        if due is not None and self.active_until[job.id] >= due.at:
            # The job ran: the problem resolves now, not at the next poll (events may come first).
            self._send_due(job, None, cycle)

    def metric_targets(self, resources: Sequence[Resource], window: Window) -> list[Resource]:
        # Only jobs that ran during the window have datapoints: asking for the
        # others would cost money and return nothing.
        return [r for r in resources if self.active_until.get(r.id, 0) >= window.start]


def _glue_run(run: JobRunTypeDef) -> Run:
    state = run.get("JobRunState", "UNKNOWN")
    final = state in GLUE_FINAL_STATES
    started, ended = epoch(run.get("StartedOn")), epoch(run.get("CompletedOn")) if final else None
    extra: list[tuple[str, Value]] = [("attempt", run.get("Attempt", 0))]
    if final:
        execution = run.get("ExecutionTime")
        if execution is not None:
            extra.append(("duration", execution))
        dpu_seconds = _dpu_seconds(run)
        if dpu_seconds is not None:
            extra.append(("dpu_seconds", dpu_seconds))
    error = _text(run.get("ErrorMessage"))
    return _run(run.get("Id", ""), state, started, ended, error=error, extra=extra)


def _dpu_seconds(run: JobRunTypeDef) -> float | None:
    """DPU-seconds as billed: AWS reports it for auto-scaling/Flex runs, else capacity x time."""
    if "DPUSeconds" in run:
        return float(run["DPUSeconds"])
    capacity, execution = run.get("MaxCapacity"), run.get("ExecutionTime")
    if capacity is None or execution is None:
        return None
    return round(capacity * execution, 3)

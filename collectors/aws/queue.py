"""The SQS queue EventBridge fills with state changes: read, map (events.py), commit, delete.

At least once, end to end, as the MQTT bridge: a message is deleted only after its readings
are committed to the spool.  A consumer that dies between the commit and the delete gets the
message again once its visibility timeout ends; the event mapper then finds the run already
sent in that state and sends nothing (while the agent lives: its memory is not on disk).

A malformed event is counted and not deleted: SQS hands it out again until the queue's
``maxReceiveCount``, then moves it to the dead-letter queue (deploy/aws/eventbridge.yaml).
That needs no permission beyond receive and delete, and the DLQ keeps the body for a human.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from trapline.collectors.aws.events import EventMapper, Verdict, Watched
from trapline.collectors.aws.session import ApiCalls, describe_failure, expiring, make_session
from trapline.collectors.aws.settings import AwsSettings
from trapline.core.backoff import Backoff
from trapline.core.model import Reading
from trapline.core.plugin import CommittingOutbox

log = logging.getLogger(__name__)

EVENTS = "events"  # the condition of a queue that cannot be read
WAIT_SECONDS = 20  # long polling: SQS's longest wait, one call per 20 s on a quiet queue
BATCH = 10  # SQS's largest batch
COUNTERS = ("received", *(v.value for v in Verdict))


ClientMaker = Callable[[], tuple[Any, float | None]]  # an SQS client and when its credentials expire


def make_sqs_client(settings: AwsSettings, calls: ApiCalls) -> tuple[Any, float | None]:
    """An SQS client in the queue's region, with the identity the section polls with."""
    session, config, expires = make_session(settings, settings.events_region, calls)
    # The long poll must not hit the read timeout: 20 s of waiting plus the answer.
    config = config.merge(type(config)(read_timeout=max(settings.timeout, WAIT_SECONDS + 10)))
    client = session.client("sqs", config=config, endpoint_url=settings.endpoint_url)
    calls.watch(client)
    return client, expires


class EventQueue:
    """One consumer of the queue: blocking calls, run in a worker thread by ``consume``."""

    def __init__(
        self,
        url: str,
        make_client: ClientMaker,
        mapper: EventMapper,
        wait: int = WAIT_SECONDS,
        poll_lock: asyncio.Lock | None = None,
    ) -> None:
        self.url = url
        self.wait = wait  # s of long polling per receive
        self.mapper = mapper
        # Held by whoever polls: a poll an event asks for must not run beside a poll cycle.
        self.poll_lock = poll_lock or asyncio.Lock()
        self._make_client = make_client
        self._client: Any = None
        self._expires: float | None = None

    @property
    def client(self) -> Any:
        if self._client is None or expiring(self._expires):
            self._client, self._expires = self._make_client()
        return self._client

    def forget_client(self) -> None:
        """Rebuild the client (and assume the role again) before the next call."""
        self._client = None

    def receive(self) -> list[dict[str, Any]]:
        answer = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=self.wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return list(answer.get("Messages", []))

    def waiting(self) -> int:
        """Messages in the queue (for ``trapline check``): the reason for GetQueueAttributes in the policy."""
        answer = self.client.get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(answer["Attributes"]["ApproximateNumberOfMessages"])

    def delete(self, handles: Sequence[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
        answer = self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        failed = answer.get("Failed", [])
        if failed:
            # Handed out again after the visibility timeout; the mapper drops the copies.
            log.warning("SQS: %d of %d deletes failed (%s)", len(failed), len(entries), failed[0].get("Code"))

    async def take(self, out: CommittingOutbox) -> int:
        """One receive: map, put, wait for the spool commit, delete; the number of messages."""
        messages = await asyncio.to_thread(self.receive)
        handles = []
        polls: dict[tuple[Watched, str], list[str]] = {}  # a poll per service, for all its events
        for message in messages:
            outcome = self.mapper.apply(message.get("Body", ""))
            if outcome.poll is not None:
                polls.setdefault(outcome.poll, []).append(message["ReceiptHandle"])
                continue
            for item in outcome.items:
                out.put(item)
            if outcome.verdict is Verdict.MALFORMED:
                first = message.get("Attributes", {}).get("ApproximateReceiveCount", "1") == "1"
                if first:
                    out.error(
                        f"SQS event {message.get('MessageId', '?')}: {outcome.reason} (left to the DLQ)"
                    )
                continue
            handles.append(message["ReceiptHandle"])
        for (watched, service), waiting in polls.items():
            async with self.poll_lock:
                result = await asyncio.to_thread(watched.poll_now, service)
            if result.errors:
                # Not deleted: SQS hands the events out again after the visibility timeout.
                reason = result.errors[0]
                log.warning("SQS: the %s poll of %d event(s) failed: %s", service, len(waiting), reason)
                continue
            for item in result.items:
                out.put(item)
            handles += waiting
        if handles:
            await out.committed()
            await asyncio.to_thread(self.delete, handles)
        return len(messages)

    def readings(self, host: str) -> list[Reading]:
        """The event path's counters, for the poller host."""
        counts = self.mapper.counts
        return [Reading.now(host, f"aws.events[{name}]", counts[name]) for name in COUNTERS]


async def consume(queue: EventQueue, out: CommittingOutbox, max_backoff: float) -> None:
    """Read the queue until cancelled; a failing receive is retried with a growing wait."""
    backoff = Backoff(initial=1.0, cap=max_backoff)
    while True:
        try:
            await queue.take(out)
        except Exception as exc:
            failure = describe_failure(exc)
            if failure.credentials:
                queue.forget_client()
            out.error(f"SQS: {failure.reason}", EVENTS)
            await asyncio.sleep(backoff.next_delay())
            continue
        if backoff.failures:
            out.resolved(EVENTS, "SQS: the event queue is read again")
        backoff.reset()

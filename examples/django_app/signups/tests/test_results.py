"""What a run writes into its task's result row, for the runs a test cannot easily make happen
under a supervisor: one whose child died, one whose row is gone, one cut off by a stop."""

import time

from django.test import TransactionTestCase

from jobrunner.contrib.django import results
from jobrunner.contrib.django.models import TaskResultRecord
from jobrunner.job import Job
from signups.tasks import count_words


def enqueued_row(status="READY", worker_ids=()):
    return TaskResultRecord.objects.create(
        id="r1", backend="default", task_path=count_words.module_path, queue_name="default",
        status=status, args=["a b"], worker_ids=list(worker_ids))


PAYLOAD = {"result_id": "r1", "backend": "default", "args": ["a b"], "kwargs": {}}


def job(attempt=1):
    return Job(id="job-1", worker_name=count_words.module_path, queue="default",
               args=PAYLOAD, attempt=attempt, enqueued_at=time.time() - 5)


class RunRecords(TransactionTestCase):
    def test_a_run_after_one_that_died_records_the_lost_run(self):
        enqueued_row(status="RUNNING", worker_ids=["gone:1"])
        record = results.run_started(PAYLOAD, count_words, job(attempt=2), "default")
        result = results.to_result(TaskResultRecord.objects.get(id="r1"))
        self.assertEqual(record.status, "RUNNING")
        self.assertEqual([e.exception_class for e in result.errors], [results.RunLost])
        self.assertEqual(result.worker_ids, ["gone:1", results.worker_id()])
        self.assertEqual(result.attempts, 2)

    def test_a_run_whose_row_is_gone_writes_it_from_the_job(self):
        record = results.run_started(PAYLOAD, count_words, job(), "default")
        self.assertEqual(record.job_id, "job-1")
        result = results.to_result(TaskResultRecord.objects.get(id="r1"))
        self.assertEqual((result.status, result.args, result.worker_ids),
                         ("RUNNING", ["a b"], [results.worker_id()]))
        self.assertLess(result.enqueued_at, result.started_at)

    def test_a_run_cut_off_by_a_stop_is_no_attempt(self):
        enqueued_row(worker_ids=["earlier:1"])
        record = results.run_started(PAYLOAD, count_words, job(), "default")
        results.run_put_back(record, "default")
        result = results.to_result(TaskResultRecord.objects.get(id="r1"))
        self.assertEqual((result.status, result.worker_ids), ("READY", ["earlier:1"]))

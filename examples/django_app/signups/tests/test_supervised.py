"""The example's views and tasks with a real `manage.py jobrunner` running them: the signup's
Worker on pgmq, and Django Tasks on pgmq and on Redis, their results read back."""

import datetime

import redis
from django.conf import settings
from django.db import transaction
from django.test import Client, TransactionTestCase
from django.utils import timezone

from jobrunner.contrib.django.compat import InvalidTask, TaskResultDoesNotExist, task_backends
from signups.models import Signup, Welcome
from signups.tasks import add, count_words, explode, flaky, shout
from signups.tests.support import Supervisor, committed, wait_for

supervisor = None


def setUpModule():
    global supervisor
    supervisor = Supervisor()


def tearDownModule():
    code = supervisor.stop()
    assert code == 0, f"the supervisor exited with {code}:\n{supervisor.output()[-3000:]}"


def finished(task, result_id, timeout=20.0):
    """The result once it is finished, read as another request would."""
    return wait_for(lambda: _if_finished(task.get_result(result_id)), timeout,
                    message=f"{task.name} {result_id} to finish; supervisor log:\n"
                            f"{supervisor.output()[-3000:]}")


def _if_finished(result):
    return result if result.is_finished else None


class Signups(TransactionTestCase):
    def test_a_signup_and_its_welcome_job_commit_together(self):
        response = Client().post("/signup", {"email": "ada@example.com", "plan": "free"})
        self.assertEqual(response.status_code, 200, response.content)
        signup_id = response.json()["signup_id"]
        welcome = wait_for(lambda: Welcome.objects.filter(signup_id=signup_id).first(),
                           message="the welcome job")
        self.assertEqual(welcome.email, "ada@example.com")

    def test_a_signup_that_rolls_back_never_had_a_job(self):
        response = Client().post("/signup", {"email": "eve@example.com", "plan": "gold"})
        self.assertEqual(response.status_code, 400)
        self.assertFalse(Signup.objects.exists())
        # Waiting, running, retrying or dead, the job would be in one of these tables; a job
        # that ran would have left its welcome.
        for table in ("pgmq.q_mail", "pgmq.a_mail"):
            self.assertEqual(committed(f"SELECT count(*) FROM {table} "
                                       "WHERE message->'args'->>'email' = 'eve@example.com'"),
                             [(0,)])
        self.assertFalse(Welcome.objects.exists())


class Tasks(TransactionTestCase):
    def test_a_task_enqueued_by_a_view_runs_and_another_request_reads_its_result(self):
        client = Client()
        response = client.post("/reports", {"text": "the quick brown fox"})
        self.assertEqual(response.status_code, 202)
        result_id = response.json()["result_id"]
        self.assertEqual(response.json()["status"], "READY")
        body = wait_for(lambda: _done(client.get(f"/reports/{result_id}").json()),
                        message="the report")
        self.assertEqual(body, {"status": "SUCCESSFUL", "attempts": 1, "errors": [],
                                "return_value": {"words": 4}})
        result = count_words.get_result(result_id)
        self.assertEqual(result.args, ["the quick brown fox"])
        self.assertEqual(len(result.worker_ids), 1)
        self.assertLessEqual(result.enqueued_at, result.started_at)
        self.assertLessEqual(result.started_at, result.finished_at)
        self.assertEqual(result.last_attempted_at, result.started_at)
        self.assertEqual(client.get("/reports/no-such-id").status_code, 404)

    def test_in_a_transaction_the_task_and_its_result_are_written_with_it(self):
        with transaction.atomic():
            result = count_words.enqueue("one two")
            self.assertEqual(count_words.get_result(result.id).status, "READY")
            self.assertEqual(committed("SELECT count(*) FROM jobrunner_task_result"), [(0,)])
        self.assertEqual(finished(count_words, result.id).return_value, {"words": 2})

    def test_a_rolled_back_transaction_takes_the_task_and_its_result_along(self):
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                result = count_words.enqueue("never counted")
                raise RuntimeError("roll back")
        with self.assertRaises(TaskResultDoesNotExist):
            count_words.get_result(result.id)
        self.assertEqual(committed("SELECT count(*) FROM pgmq.q_default WHERE "
                                   "message->'args'->>'result_id' = %s", result.id), [(0,)])

    def test_a_failing_task_is_failed_with_its_error(self):
        result = finished(explode, explode.enqueue("boom").id)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual([e.exception_class for e in result.errors], [ValueError])
        self.assertIn("ValueError: boom", result.errors[0].traceback)
        self.assertIn("in explode", result.errors[0].traceback)
        self.assertIsNotNone(result.finished_at)
        self.assertEqual(result.attempts, 1)
        with self.assertRaises(ValueError):
            result.return_value

    def test_jobrunner_retries_a_task_and_keeps_each_runs_error(self):
        result = finished(flaky, flaky.enqueue(succeed_on=3).id)
        self.assertEqual(result.status, "SUCCESSFUL")
        self.assertEqual(result.return_value, 3)          # context.attempt of the last run
        self.assertEqual(result.attempts, 3)
        self.assertEqual([e.exception_class_path for e in result.errors],
                         ["jobrunner.errors.Retry"] * 2)
        self.assertIn("attempt 2: not yet", result.errors[1].traceback)

    def test_run_after_holds_a_task_back_until_then(self):
        run_after = timezone.now() + datetime.timedelta(seconds=1.5)
        result = count_words.using(run_after=run_after).enqueue("later")
        self.assertEqual(count_words.get_result(result.id).task.run_after, run_after)
        done = finished(count_words, result.id)
        self.assertEqual(done.return_value, {"words": 1})
        self.assertGreaterEqual(done.started_at, run_after)

    def test_run_after_on_redis_waits_in_the_schedule_set_until_then(self):
        client = redis.Redis.from_url(settings.REDIS_URL)
        run_after = timezone.now() + datetime.timedelta(seconds=1.5)
        result = add.using(run_after=run_after).enqueue(20, 22)
        self.assertEqual(add.get_result(result.id).task.run_after, run_after)
        self.assertGreaterEqual(client.zcard("schedule"), 1, "not in Sidekiq's schedule set")
        done = finished(add, result.id)
        self.assertEqual(done.return_value, 42)
        self.assertGreaterEqual(done.started_at, run_after)

    def test_an_async_task_on_another_queue_of_the_backend(self):
        result = shout.using(queue_name="reports").enqueue("hi")
        self.assertEqual(finished(shout, result.id).return_value, "HI")
        self.assertEqual(shout.get_result(result.id).task.queue_name, "reports")

    def test_a_task_on_redis_is_pushed_when_the_transaction_commits(self):
        client = redis.Redis.from_url(settings.REDIS_URL)
        with transaction.atomic():
            result = add.enqueue(2, 3)
            self.assertEqual(client.llen("queue:default"), 0, "pushed before the commit")
        self.assertEqual(finished(add, result.id).return_value, 5)
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                never = add.enqueue(4, 5)
                raise RuntimeError("roll back")
        with self.assertRaises(TaskResultDoesNotExist):
            add.get_result(never.id)
        self.assertEqual(client.llen("queue:default"), 0)
        outside = add.enqueue(1, 1)                           # outside a transaction
        self.assertEqual(finished(add, outside.id).return_value, 2)

    def test_what_the_backend_refuses_at_enqueue(self):
        backend = task_backends["default"]
        self.assertEqual((backend.supports_defer, backend.supports_async_task,
                          backend.supports_get_result, backend.supports_priority),
                         (True, True, True, False))
        with self.assertRaises(InvalidTask):
            count_words.using(priority=10)
        with self.assertRaises(InvalidTask):
            count_words.using(queue_name="not-in-QUEUES")
        with self.assertRaises(TypeError):
            count_words.enqueue(datetime.datetime.now())
        with self.assertRaises(TaskResultDoesNotExist):
            count_words.get_result("0190a5c4-0000-7000-8000-000000000000")
        with self.assertRaises(RuntimeError), transaction.atomic():
            # as Django's own backends do: a tuple becomes a list (and the job never exists)
            self.assertEqual(count_words.enqueue(("a", "tuple")).args, [["a", "tuple"]])
            raise RuntimeError("roll back")


def _done(body):
    return body if body["status"] in ("SUCCESSFUL", "FAILED") else None

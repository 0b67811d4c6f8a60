"""``Worker.enqueue(django.db.connection, args)``: the job commits or rolls back with Django's
transaction, on the driver Django uses (psycopg 3 on Django 6 here, psycopg2 on 5.2)."""

import os
import unittest

import jobrunner
from django.db import IntegrityError, connection, connections, transaction
from django.db.transaction import TransactionManagementError
from django.test import TransactionTestCase

from signups.models import Signup
from signups.tests.support import committed, drop_queue, execute


class Probe(jobrunner.Worker):
    """Enqueued only: no supervisor serves its queue, so every job stays where it was put."""

    enqueuer = jobrunner.PgEnqueuer
    queue = "probe"


def probe_jobs():
    """The args of the committed jobs in the probe queue, in order."""
    return [row[0] for row in committed("SELECT message->'args' FROM pgmq.q_probe "
                                        "ORDER BY msg_id")]


class EnqueueOnDjangosConnection(TransactionTestCase):
    def setUp(self):
        drop_queue("probe")
        Probe.enqueue(connection, "first")          # creates the queue, in autocommit
        self.assertEqual(probe_jobs(), ["first"])

    def tearDown(self):
        drop_queue("probe")

    def test_the_driver_is_the_one_django_chose(self):
        connection.ensure_connection()
        module = type(connection.connection).__module__.split(".")[0]
        self.assertEqual(module, os.environ.get("EXAMPLE_EXPECT_DRIVER", module))

    def test_a_job_commits_with_the_atomic_block(self):
        with transaction.atomic():
            Signup.objects.create(email="ada@example.com", plan="free")
            Probe.enqueue(connection, "with the signup")
            self.assertEqual(probe_jobs(), ["first"], "visible before the commit")
        self.assertEqual(probe_jobs(), ["first", "with the signup"])

    def test_a_job_rolls_back_with_the_atomic_block(self):
        with self.assertRaises(ZeroDivisionError):
            with transaction.atomic():
                Probe.enqueue(connection, "never")
                Probe.enqueue_batch(connection, ["never-1", "never-2"])
                1 / 0
        self.assertEqual(probe_jobs(), ["first"])

    def test_a_savepoint_rolled_back_takes_its_job_along(self):
        with transaction.atomic():
            Probe.enqueue(connection, "outer")
            try:
                with transaction.atomic():
                    Probe.enqueue_in(connection, 60, "inner")
                    raise RuntimeError("roll back the savepoint only")
            except RuntimeError:
                pass
        self.assertEqual(probe_jobs(), ["first", "outer"])

    def test_a_failed_enqueue_raises_djangos_error_and_leaves_the_block_usable(self):
        with other_constraint("CHECK (message->'args' <> '\"refused\"')"):
            with transaction.atomic():
                Probe.enqueue(connection, "before")
                with self.assertRaises(IntegrityError):
                    Probe.enqueue(connection, "refused")
                self.assertFalse(connection.needs_rollback)
                Signup.objects.create(email="bob@example.com", plan="pro")   # still usable
                Probe.enqueue(connection, "after")
        self.assertEqual(probe_jobs(), ["first", "before", "after"])
        self.assertEqual(list(Signup.objects.values_list("email", flat=True)),
                         ["bob@example.com"])

    def test_in_a_block_a_failed_query_broke_the_enqueue_is_refused_as_any_query_is(self):
        with transaction.atomic():
            with self.assertRaises(IntegrityError):
                with transaction.atomic(savepoint=False):
                    Signup.objects.create(email="twice@example.com", plan="free")
                    Signup.objects.create(email="twice@example.com", plan="free")
            with self.assertRaises(TransactionManagementError):
                Probe.enqueue(connection, "in a broken block")
        self.assertEqual(probe_jobs(), ["first"])

    @unittest.skipUnless(os.environ.get("EXAMPLE_EXPECT_DRIVER", "psycopg") == "psycopg",
                         "server-side binding is psycopg 3's")
    def test_a_connection_that_binds_on_the_server_enqueues_in_one_round_trip_too(self):
        settings_dict = dict(connection.settings_dict)
        settings_dict["OPTIONS"] = dict(settings_dict["OPTIONS"], server_side_binding=True)
        binding = type(connections["default"])(settings_dict, alias="server_binding")
        try:
            with binding.cursor() as cursor:
                self.assertEqual(type(cursor.cursor).__name__, "ServerBindingCursor")
            binding.set_autocommit(False)
            Probe.enqueue(binding, "bound on the server")
            self.assertEqual(probe_jobs(), ["first"])
            binding.commit()
        finally:
            binding.close()
        self.assertEqual(probe_jobs(), ["first", "bound on the server"])

    def test_outside_a_transaction_the_job_is_committed_at_once(self):
        self.assertTrue(connection.get_autocommit())
        Probe.enqueue(connection, "autocommit")
        self.assertEqual(probe_jobs(), ["first", "autocommit"])


class other_constraint:
    """A constraint on the probe queue's table for the duration of a ``with`` block."""

    def __init__(self, check):
        self.check = check

    def __enter__(self):
        execute(f"ALTER TABLE pgmq.q_probe ADD CONSTRAINT refuse {self.check}")

    def __exit__(self, *exc):
        execute("ALTER TABLE pgmq.q_probe DROP CONSTRAINT refuse")

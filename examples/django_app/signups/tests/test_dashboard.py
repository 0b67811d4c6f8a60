"""jobrunner's dashboard mounted in the project's WSGI application (project/wsgi.py): it opens
for a staff user's Django session only, builds its links under the mount, and refuses a POST
without its CSRF token."""

from django.contrib.auth.models import User
from django.test import Client, TransactionTestCase
from werkzeug.test import Client as WSGIClient

from project.wsgi import application

MOUNT = "/admin/jobs"


class DashboardMountedInDjango(TransactionTestCase):
    def session_cookie(self, user):
        django_client = Client()
        django_client.force_login(user)          # a session row, committed
        return django_client.cookies["sessionid"].value

    def browser(self, user=None):
        client = WSGIClient(application)
        if user is not None:
            client.set_cookie("sessionid", self.session_cookie(user))
        return client

    def test_a_staff_user_sees_the_pages_under_the_mount(self):
        staff = User.objects.create_user("ops", password="x", is_staff=True)
        client = self.browser(staff)
        start = client.get(MOUNT + "/")
        self.assertEqual(start.status_code, 302)
        self.assertTrue(start.headers["Location"].endswith(MOUNT + "/pgmq/"))
        page = client.get(MOUNT + "/pgmq/queues")
        self.assertEqual(page.status_code, 200)
        text = page.get_data(as_text=True)
        self.assertIn(f'href="{MOUNT}/pgmq/busy"', text)
        self.assertIn(f'href="{MOUNT}/sidekiq/queues"', text)
        self.assertEqual(client.get(MOUNT + "/sidekiq/dead").status_code, 200)

    def test_anyone_else_gets_403_and_django_keeps_its_own_urls(self):
        someone = User.objects.create_user("visitor", password="x")
        for client in (self.browser(), self.browser(someone)):
            self.assertEqual(client.get(MOUNT + "/pgmq/queues").status_code, 403)
        # Outside the mount, Django answers: its own 404.
        self.assertEqual(self.browser().get("/no-such-page").status_code, 404)

    def test_a_post_without_the_csrf_token_gets_403(self):
        staff = User.objects.create_user("ops", password="x", is_staff=True)
        client = self.browser(staff)
        refused = client.post(MOUNT + "/pgmq/queues/action",
                              data={"queue": "default", "action": "pause"})
        self.assertEqual(refused.status_code, 403)
        self.assertIn("CSRF token", refused.get_data(as_text=True))    # let in, then refused
        with application.mounts[MOUNT].extensions["jobrunner"].backends.inspector("pgmq") as pg:
            self.assertNotIn("default", pg.paused_queues())

"""A plain jobrunner Worker, enqueued on Django's connection; ``manage.py jobrunner
signups.jobs:registry`` runs it beside the project's tasks."""

import jobrunner


class WelcomeEmail(jobrunner.Worker):
    enqueuer = jobrunner.PgEnqueuer
    queue = "mail"
    max_retries = 3

    def handle(self, args):
        from signups.models import Welcome
        Welcome.objects.get_or_create(signup_id=args["signup_id"],
                                      defaults={"email": args["email"]})


registry = jobrunner.Registry()
registry.register(WelcomeEmail)

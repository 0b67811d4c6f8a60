"""The example's tables: signups, and the welcome the WelcomeEmail worker records for each."""

from django.db import models


class Signup(models.Model):
    email = models.EmailField(unique=True)
    plan = models.CharField(max_length=20)


class Welcome(models.Model):
    """Written by ``jobs.WelcomeEmail``: the stand-in for an email sent."""

    signup_id = models.IntegerField(unique=True)
    email = models.EmailField()

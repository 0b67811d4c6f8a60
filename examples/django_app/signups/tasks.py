"""The example's Django Tasks, run by ``manage.py jobrunner``."""

import asyncio

import jobrunner

try:
    from django.tasks import task             # Django 6
except ImportError:
    from django_tasks import task             # the backport, on Django 5.2


@task
def count_words(text):
    return {"words": len(text.split())}


@task
def explode(message):
    raise ValueError(message)


@task
async def shout(text):
    await asyncio.sleep(0)
    return text.upper()


@task(backend="retrying", takes_context=True)
def flaky(context, succeed_on):
    """Asks jobrunner for another run until its attempt ``succeed_on``; returns the attempt."""
    if context.attempt < succeed_on:
        raise jobrunner.Retry(in_seconds=0.1, reason=f"attempt {context.attempt}: not yet")
    return context.attempt


@task(backend="redis")
def add(a, b):
    return a + b

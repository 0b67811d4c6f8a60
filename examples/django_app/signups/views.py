"""The example's views: a signup that enqueues a Worker in its transaction, and a report run
as a Django Task whose result another request reads."""

from django.db import connection, transaction
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from signups.jobs import WelcomeEmail
from signups.models import Signup
from signups.tasks import count_words

try:
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks.exceptions import TaskResultDoesNotExist

PLANS = ("free", "pro")


@csrf_exempt
@require_POST
def signup(request):
    """The signup and its welcome job commit together, or neither does."""
    try:
        with transaction.atomic():
            user = Signup.objects.create(email=request.POST["email"], plan="")
            WelcomeEmail.enqueue(connection, {"signup_id": user.id, "email": user.email})
            if request.POST.get("plan") not in PLANS:
                raise ValueError(f"unknown plan {request.POST.get('plan')!r}")
            user.plan = request.POST["plan"]
            user.save()
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"signup_id": user.id})


@csrf_exempt
@require_POST
def new_report(request):
    """Enqueue the task; its result id is what the client asks for later."""
    result = count_words.enqueue(request.POST["text"])
    return JsonResponse({"result_id": result.id, "status": result.status}, status=202)


@require_GET
def report(request, result_id):
    try:
        result = count_words.get_result(result_id)
    except TaskResultDoesNotExist:
        raise Http404(f"no report {result_id}") from None
    body = {"status": result.status, "attempts": result.attempts,
            "errors": [error.exception_class_path for error in result.errors]}
    if result.status == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return JsonResponse(body)

"""The example's URLs."""

from django.urls import path

from signups import views

urlpatterns = [
    path("signup", views.signup),
    path("reports", views.new_report),
    path("reports/<str:result_id>", views.report),
]

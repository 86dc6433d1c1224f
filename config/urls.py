from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config import health, metrics
from workspaces.auth_api import TokenView

api_v1: list[URLPattern | URLResolver] = [
    path("auth/token/", TokenView.as_view(), name="auth-token"),
    path("", include("workspaces.urls")),
    path("", include("sandboxes.urls")),
    path("", include("artifacts.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
]

handler404 = "config.api.json_404"
handler500 = "config.api.json_500"

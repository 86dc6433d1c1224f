from typing import Any

from django_filters import (
    BooleanFilter as BooleanFilter,
    CharFilter as CharFilter,
    ChoiceFilter as ChoiceFilter,
    FilterSet as FilterSet,
    UUIDFilter as UUIDFilter,
)

class DjangoFilterBackend:
    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any: ...

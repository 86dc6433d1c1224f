from typing import Any

from django.http import HttpRequest, HttpResponse

class FSMAdminMixin:
    fsm_fields: list[str]
    fsm_forms: dict[str, Any]
    fsm_post_param: str
    fsm_transition_form_template: str
    def response_change(self, request: HttpRequest, obj: Any) -> HttpResponse: ...
    def fsm_transition_view(
        self, request: HttpRequest, object_id: str, transition_name: str, **kwargs: Any
    ) -> HttpResponse: ...
    def _get_fsm_extra_context(self, *, request: HttpRequest, obj: Any) -> Any: ...
    def _apply_fsm_transition(
        self, *, obj: Any, transition_name: str, request: HttpRequest, kwargs: Any = ...
    ) -> bool: ...

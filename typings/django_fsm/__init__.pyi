# django-fsm-2 ships py.typed, but mypy resolves its classes to Any (they are built on
# TYPE_CHECKING-only aliases); these declare what Airlock uses.
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.db import models

_F = TypeVar("_F", bound=Callable[..., Any])

class TransitionNotAllowed(Exception):
    object: Any
    method: Any

class ConcurrentTransition(Exception): ...

class FSMField(models.CharField[Any, str]):
    def __init__(
        self, *args: Any, default: Any = ..., protected: bool = ..., **kwargs: Any
    ) -> None: ...

class FSMModelMixin: ...
class ConcurrentTransitionMixin(FSMModelMixin): ...

def transition(
    field: Any,
    source: Any = ...,
    target: Any = ...,
    on_error: Any = ...,
    conditions: Iterable[Callable[[Any], bool]] = ...,
    permission: Any = ...,
    custom: dict[str, Any] = ...,
) -> Callable[[_F], _F]: ...
def can_proceed(bound_method: Any, check_conditions: bool = ...) -> bool: ...
